#!/bin/bash
# What wardgate.devtools.localcloud.azure.AzureLocalCloud.provision("wardgate") creates in Azurite.
# Key Vault has no emulator: keys and secrets exist only with the Docker-free launcher's fake vault
# (python -m wardgate.devtools.localcloud.azure_fakes), see README-azure.md.
set -euo pipefail
KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
export AZURE_STORAGE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=$KEY;BlobEndpoint=http://azurite:10000/devstoreaccount1;QueueEndpoint=http://azurite:10001/devstoreaccount1;TableEndpoint=http://azurite:10002/devstoreaccount1;"
for attempt in $(seq 1 30); do
  az storage queue create --name wardgate-approvals >/dev/null 2>&1 && break
  sleep 2
done
az storage queue create --name wardgate-approvals-poison
az storage table create --name wardgatedecisions
az storage container create --name wardgate-audit   # Azurite: no immutability policy (use ?worm=off)
echo "wardgate Azure storage resources ready"
