#!/bin/bash
# LocalStack ready hook: what wardgate.devtools.localcloud.aws.AwsLocalCloud.provision("wardgate") creates.
set -euo pipefail
P=wardgate
R=us-east-1

dlq_url=$(awslocal sqs create-queue --queue-name "$P-approvals-dlq" --query QueueUrl --output text)
dlq_arn=$(awslocal sqs get-queue-attributes --queue-url "$dlq_url" --attribute-names QueueArn \
          --query Attributes.QueueArn --output text)
awslocal sqs create-queue --queue-name "$P-approvals" --attributes \
  "{\"VisibilityTimeout\":\"30\",\"RedrivePolicy\":\"{\\\"deadLetterTargetArn\\\":\\\"$dlq_arn\\\",\\\"maxReceiveCount\\\":\\\"3\\\"}\"}"

awslocal s3api create-bucket --bucket "$P-audit" --object-lock-enabled-for-bucket
awslocal s3api put-bucket-versioning --bucket "$P-audit" --versioning-configuration Status=Enabled
awslocal s3api put-object-lock-configuration --bucket "$P-audit" --object-lock-configuration \
  '{"ObjectLockEnabled":"Enabled","Rule":{"DefaultRetention":{"Mode":"GOVERNANCE","Days":1}}}'

awslocal dynamodb create-table --table-name "$P-decisions" --billing-mode PAY_PER_REQUEST \
  --attribute-definitions AttributeName=collection,AttributeType=S AttributeName=record_key,AttributeType=S \
  --key-schema AttributeName=collection,KeyType=HASH AttributeName=record_key,KeyType=RANGE

key_id=$(awslocal kms create-key --key-spec ECC_NIST_P256 --key-usage SIGN_VERIFY \
         --description "$P audit digest signing" --query KeyMetadata.KeyId --output text)
awslocal kms create-alias --alias-name "alias/$P-audit-signing" --target-key-id "$key_id"

password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
awslocal secretsmanager create-secret --name "$P/db" \
  --secret-string "{\"username\":\"wardgate_svc\",\"password\":\"$password\"}"
# The approval function's secrets (change the webhook URL to your receiver).
awslocal secretsmanager create-secret --name "$P/signing" --secret-string "$(head -c 24 /dev/urandom | base64)"
awslocal secretsmanager create-secret --name "$P/webhook-url" --secret-string "http://127.0.0.1:9999/hook"
echo "wardgate AWS resources ready in region $R"
