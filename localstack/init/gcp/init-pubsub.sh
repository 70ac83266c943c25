#!/bin/sh
# What wardgate.devtools.localcloud.gcp.GcpLocalCloud.create_queue("wardgate-approvals") creates in the
# Pub/Sub emulator (its REST surface). Firestore collections need no creation; GCS buckets come from
# init/gcs/; Cloud KMS and Secret Manager have no emulator (see README-gcp.md).
set -eu
API=http://pubsub:8085/v1/projects/wardgate-local
until curl -fs http://pubsub:8085/ >/dev/null; do sleep 2; done
curl -fs -X PUT "$API/topics/wardgate-approvals"
curl -fs -X PUT "$API/topics/wardgate-approvals-dead"
curl -fs -X PUT "$API/subscriptions/wardgate-approvals-dead-sub" -H 'Content-Type: application/json' \
  -d '{"topic": "projects/wardgate-local/topics/wardgate-approvals-dead"}'
curl -fs -X PUT "$API/subscriptions/wardgate-approvals-sub" -H 'Content-Type: application/json' \
  -d '{"topic": "projects/wardgate-local/topics/wardgate-approvals", "ackDeadlineSeconds": 10,
       "deadLetterPolicy": {"deadLetterTopic": "projects/wardgate-local/topics/wardgate-approvals-dead",
                            "maxDeliveryAttempts": 5}}'
echo "wardgate Pub/Sub resources ready"
