"""wardgate on Google Cloud: ``deploy(stack)`` builds every resource of one environment.

Gateway on a regional managed instance group of Container-Optimized OS VMs behind an internal
passthrough TCP load balancer (``gateway.py``: Cloud Run carries no raw TCP); Pub/Sub topics
whose every subscription dead-letters; Cloud Functions (2nd gen) fed by those subscriptions (push with
an OIDC token, so the dead-letter policy is ours, not an implicit Eventarc subscription's); Cloud
Scheduler for evidence export and the hourly retirement of rotated credentials; Secret Manager rotation
notifications for credential rotation; a GCS
audit bucket with a retention policy (locked in prod) and CMEK; Cloud KMS keys; read-only auditors.

Every grant is a resource-level binding (topic, secret, key, bucket, repository) or a project binding
narrowed by an IAM condition to wardgate's own Firestore database. The only unconditioned project roles
are the write-only agent roles the gateway VMs' logging and monitoring agents need
(:data:`VM_AGENT_ROLES`): those permissions exist at project level only.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pulumi
import pulumi_gcp as gcp

from functions.build import GCP_ENTRY_POINTS, build, tree_digest
from infra.common import function_env as env
from infra.common.config import StackConfig, StackConfigError
from infra.common.gateway_config import CONTROL_PORT, TLS_FROM_ENV_FILES, GatewayWiring, render_gateway_config
from infra.common.naming import Naming
from infra.gcp.gateway import GatewayGroup, artifact_registry_repository
from infra.gcp.network import network_for

DEFAULT_BUILD_DIR = Path(__file__).resolve().parent / ".build"
RUNTIME = "python311"
AUDIT_PREFIX = "audit/"
EVIDENCE_PREFIX = "evidence/"
# Cloud Scheduler's own notification for the rotation function (functions/key_rotation/gcp.py).
RETIRE_EVENT = "WARDGATE_RETIRE"
RETIRE_SCHEDULE = "15 * * * *"
# Written by the VMs' logging and monitoring agents; no narrower resource than the project exists.
VM_AGENT_ROLES = ("roles/logging.logWriter", "roles/monitoring.metricWriter")
# What FirestoreDecisionStore's get (BatchGetDocuments) and create (Commit with exists=false) need.
NOTIFIER_STORE_PERMISSIONS = ("datastore.entities.create", "datastore.entities.get")
_MEMBER = re.compile(r"^(user|group|serviceAccount|domain):[^\s]+$")
_DAY = 86400


def custom_role_id(naming: Naming, purpose: str) -> str:
    """A project custom role id: letters, digits, ``_`` and ``.`` only (no hyphens), at most 64."""
    role_id = f"wardgate_{naming.environment}_{purpose}"
    if not re.fullmatch(r"[a-zA-Z0-9_.]{3,64}", role_id):
        raise StackConfigError(f"custom role id {role_id!r} is not valid: 3-64 letters, digits, '_' or '.'")
    return role_id


class WardgateGcp(pulumi.ComponentResource):
    """One wardgate environment on Google Cloud."""

    def __init__(self, name: str, stack: StackConfig, code: dict[str, Path],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("wardgate:gcp:Deployment", name, None, opts)
        if not 5 <= stack.approvals.max_receives <= 100:
            raise StackConfigError("wardgate:approvals.max_receives: Pub/Sub dead-letters after 5 to 100 "
                                   f"delivery attempts, not {stack.approvals.max_receives}")
        bad = [m for m in stack.auditors if not _MEMBER.match(m)]
        if bad:
            raise StackConfigError(f"wardgate:auditors: {bad} are not IAM members (user:|group:|serviceAccount:|domain:)")
        naming = Naming(stack.environment, stack.name_suffix)
        self.naming, self.stack = naming, stack
        me = pulumi.ResourceOptions(parent=self)
        prod = stack.tier == "prod"
        region = stack.location
        labels = naming.tags()
        client = gcp.organizations.get_client_config_output()
        project = client.project
        number = gcp.organizations.get_project_output().number

        network = network_for(stack, naming, project, self)

        # Service accounts: one per workload, so each binding below names exactly one user.
        accounts = {purpose: gcp.serviceaccount.Account(
            naming.name(purpose), account_id=naming.name(purpose, max_length=30), project=project,
            display_name=f"wardgate {stack.environment} {purpose}", opts=me)
            for purpose in ("gateway", "notifier", "webhook", "evidence", "rotation", "pusher")}
        member = {purpose: account.member for purpose, account in accounts.items()}

        # Keys: a data key for the bucket (CMEK) and the asymmetric audit signing key.
        ring = gcp.kms.KeyRing(naming.name("keys"), name=naming.name("keys"), project=project, location=region,
                               opts=pulumi.ResourceOptions(parent=self, protect=prod))
        data_key = gcp.kms.CryptoKey(naming.name("data"), name=naming.name("data"), key_ring=ring.id,
                                     purpose="ENCRYPT_DECRYPT", rotation_period=f"{90 * _DAY}s", labels=labels,
                                     opts=pulumi.ResourceOptions(parent=self, protect=prod))
        signing_key = gcp.kms.CryptoKey(naming.name("audit-signing"), name=naming.name("audit-signing"),
                                        key_ring=ring.id, purpose="ASYMMETRIC_SIGN", labels=labels,
                                        version_template={"algorithm": "EC_SIGN_P256_SHA256",
                                                          "protection_level": "HSM" if prod else "SOFTWARE"},
                                        opts=pulumi.ResourceOptions(parent=self, protect=prod))
        storage_agent = gcp.kms.CryptoKeyIAMMember(
            naming.name("data-gcs-agent"), crypto_key_id=data_key.id, role="roles/cloudkms.cryptoKeyEncrypterDecrypter",
            member=pulumi.Output.concat("serviceAccount:service-", number, "@gs-project-accounts.iam.gserviceaccount.com"),
            opts=me)
        # The gateway VMs' boot disks (where audit events are spooled before shipping) use the data key.
        compute_agent = gcp.kms.CryptoKeyIAMMember(
            naming.name("data-compute-agent"), crypto_key_id=data_key.id,
            role="roles/cloudkms.cryptoKeyEncrypterDecrypter",
            member=pulumi.Output.concat("serviceAccount:service-", number,
                                        "@compute-system.iam.gserviceaccount.com"), opts=me)

        # The audit bucket: WORM retention (locked in prod: it can then never be shortened or removed),
        # CMEK, uniform access, public access prevention, versioning.
        bucket_name = naming.global_name("audit")
        self.audit_bucket = gcp.storage.Bucket(
            naming.name("audit"), name=bucket_name, project=project, location=region,
            uniform_bucket_level_access=True, public_access_prevention="enforced", versioning={"enabled": True},
            retention_policy={"retention_period": str(stack.audit.retention_days * _DAY), "is_locked": prod},
            encryption={"default_kms_key_name": data_key.id}, force_destroy=False, labels=labels,
            opts=pulumi.ResourceOptions(parent=self, protect=prod, depends_on=[storage_agent]))
        objects = f"projects/_/buckets/{bucket_name}"

        def bucket_grant(label: str, role: str, who, prefixes: list[str]) -> None:
            # Object roles narrowed to prefixes; listing is a bucket-level call, so the bucket itself too.
            expression = " || ".join([f'resource.name == "{objects}"',
                                      *(f'resource.name.startsWith("{objects}/objects/{p}")' for p in prefixes)])
            gcp.storage.BucketIAMMember(naming.name(label), bucket=self.audit_bucket.name, role=role, member=who,
                                        condition={"title": label, "expression": expression}, opts=me)

        # Messaging: every subscription dead-letters; every dead-letter topic keeps its messages.
        pubsub_agent = pulumi.Output.concat("serviceAccount:service-", number, "@gcp-sa-pubsub.iam.gserviceaccount.com")

        def topic(purpose: str) -> gcp.pubsub.Topic:
            return gcp.pubsub.Topic(naming.name(purpose), name=naming.name(purpose), project=project, labels=labels,
                                    message_retention_duration=f"{7 * _DAY}s", opts=me)

        def dead_letter_topic(purpose: str) -> gcp.pubsub.Topic:
            dead = topic(f"{purpose}-dead-letters")
            gcp.pubsub.Subscription(naming.name(f"{purpose}-dead-letters"), name=naming.name(f"{purpose}-dead-letters"),
                                    project=project, topic=dead.id, message_retention_duration=f"{7 * _DAY}s",
                                    ack_deadline_seconds=60, expiration_policy={"ttl": ""},
                                    labels={**labels, "wardgate-role": "dead-letter"}, opts=me)
            gcp.pubsub.TopicIAMMember(naming.name(f"{purpose}-dead-letters-agent"), project=project, topic=dead.id,
                                      role="roles/pubsub.publisher", member=pubsub_agent, opts=me)
            return dead

        approvals_topic = topic("approvals")
        gcp.pubsub.TopicIAMMember(naming.name("approvals-gateway"), project=project, topic=approvals_topic.id,
                                  role="roles/pubsub.publisher", member=member["gateway"], opts=me)
        schedule_topic = topic("evidence-export-schedule")
        rotation_topic = topic("secret-rotation")

        # Firestore: the decision store, a database of its own so grants can be conditioned on it.
        database = gcp.firestore.Database(naming.name("decisions"), name=naming.name("decisions"), project=project,
                                          location_id=region, type="FIRESTORE_NATIVE",
                                          delete_protection_state="DELETE_PROTECTION_ENABLED" if prod
                                          else "DELETE_PROTECTION_DISABLED",
                                          point_in_time_recovery_enablement="POINT_IN_TIME_RECOVERY_ENABLED",
                                          opts=me)

        def firestore_grant(label: str, role: pulumi.Input[str], who) -> None:
            gcp.projects.IAMMember(naming.name(label), project=project, role=role, member=who, condition={
                "title": label,
                "expression": pulumi.Output.concat('resource.name == "', database.id, '" || resource.name.startsWith("',
                                                   database.id, '/")')}, opts=me)

        # Secrets: created empty, values put by the operator; each readable only by its user.
        def secret(purpose: str, rotate_days: int = 0) -> gcp.secretmanager.Secret:
            rotation = {}
            if rotate_days:
                first = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + \
                    datetime.timedelta(days=rotate_days)
                rotation = {"rotation": {"rotation_period": f"{rotate_days * _DAY}s",
                                         "next_rotation_time": first.strftime("%Y-%m-%dT%H:%M:%SZ")},
                            "topics": [{"name": rotation_topic.id}]}
            return gcp.secretmanager.Secret(
                naming.name(purpose), secret_id=naming.name(purpose), project=project, labels=labels,
                replication={"user_managed": {"replicas": [{"location": region}]}}, **rotation,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[rotation_agent] if rotate_days else None,
                                            ignore_changes=["rotation.nextRotationTime"]))

        rotation_agent = gcp.pubsub.TopicIAMMember(
            naming.name("secret-rotation-agent"), project=project, topic=rotation_topic.id, role="roles/pubsub.publisher",
            member=pulumi.Output.concat("serviceAccount:service-", number,
                                        "@gcp-sa-secretmanager.iam.gserviceaccount.com"), opts=me)
        db_secrets = {n: secret(f"db-{n}", r.rotate_days) for n, r in sorted(stack.resources.items())}
        masking_key = secret("masking-key")
        webhook_url_secret = secret("approver-webhook-url")
        signing_secret = secret("approver-signing-secret")
        tls = {"cert": secret("gateway-tls-cert"), "key": secret("gateway-tls-key")}

        def secret_access(label: str, secrets: list, who, role: str = "roles/secretmanager.secretAccessor") -> None:
            for index, item in enumerate(secrets):
                gcp.secretmanager.SecretIamMember(naming.name(f"{label}-{index}"), project=project,
                                                  secret_id=item.id, role=role, member=who, opts=me)

        def secret_url(item: gcp.secretmanager.Secret) -> pulumi.Output[str]:
            return pulumi.Output.concat("gcp-sm://", item.id)

        # Grants per principal (AC-6).
        secret_access("gateway-secrets", [*db_secrets.values(), masking_key, *tls.values()], member["gateway"])
        firestore_grant("gateway-decisions", "roles/datastore.user", member["gateway"])
        bucket_grant("gateway-audit-read", "roles/storage.objectViewer", member["gateway"], [AUDIT_PREFIX])
        bucket_grant("gateway-audit-write", "roles/storage.objectCreator", member["gateway"], [AUDIT_PREFIX])
        gcp.kms.CryptoKeyIAMMember(naming.name("gateway-signs"), crypto_key_id=signing_key.id,
                                   role="roles/cloudkms.signerVerifier", member=member["gateway"], opts=me)
        for role in VM_AGENT_ROLES:
            gcp.projects.IAMMember(naming.name(f"gateway-{role.split('/')[1].split('.')[0]}"), project=project,
                                   role=role, member=member["gateway"], opts=me)
        repository = artifact_registry_repository(stack.gateway.image)
        if repository is not None:  # the VMs pull the image with the gateway's own account
            gcp.artifactregistry.RepositoryIamMember(
                naming.name("gateway-pulls"), location=repository[0], project=repository[1],
                repository=repository[2], role="roles/artifactregistry.reader", member=member["gateway"], opts=me)
        # The notifier signs with the signing secret (teams/generic bodies, one-time links) only.
        secret_access("notifier-secrets", [webhook_url_secret, *([signing_secret] if env.notifier_signs(stack) else [])],
                      member["notifier"])
        # It reads and creates decision records, never updates, deletes or queries them: no predefined
        # role is that narrow (datastore.user also updates and deletes), so a custom role.
        notifier_store = gcp.projects.IAMCustomRole(
            naming.name("notifier-decisions-role"), project=project, role_id=custom_role_id(naming, "notifier_decisions"),
            title=f"wardgate {stack.environment} notifier: read and create decision records",
            permissions=list(NOTIFIER_STORE_PERMISSIONS), stage="GA", opts=me)
        firestore_grant("notifier-decisions", notifier_store.name, member["notifier"])
        secret_access("webhook-secrets", [signing_secret], member["webhook"])
        firestore_grant("webhook-decisions", "roles/datastore.user", member["webhook"])
        bucket_grant("evidence-read", "roles/storage.objectViewer", member["evidence"], [AUDIT_PREFIX, EVIDENCE_PREFIX])
        bucket_grant("evidence-write", "roles/storage.objectCreator", member["evidence"], [EVIDENCE_PREFIX])
        gcp.kms.CryptoKeyIAMMember(naming.name("evidence-signs"), crypto_key_id=signing_key.id,
                                   role="roles/cloudkms.signerVerifier", member=member["evidence"], opts=me)
        rotated = [db_secrets[n] for n, r in sorted(stack.resources.items()) if r.rotate_days]
        secret_access("rotation-read", rotated, member["rotation"])
        secret_access("rotation-versions", rotated, member["rotation"], "roles/secretmanager.secretVersionManager")

        # URLs (the gateway's gcp adapters parse these forms).
        queue_url = pulumi.Output.concat("pubsub://", project, "/", approvals_topic.name, "?subscription=",
                                         naming.name("approvals-notifier"))
        store_url = pulumi.Output.concat("firestore://", project, "/decisions?database=", database.name)
        audit_url = f"gs://{bucket_name}/{AUDIT_PREFIX}"
        evidence_url = f"gs://{bucket_name}/{EVIDENCE_PREFIX}"
        signer_url = pulumi.Output.concat("gcpkms://", signing_key.id, "/cryptoKeyVersions/1")

        # Functions: sources uploaded to a private bucket, named by content digest.
        sources = gcp.storage.Bucket(naming.name("function-sources"), name=naming.global_name("function-sources"),
                                     project=project, location=region, uniform_bucket_level_access=True,
                                     public_access_prevention="enforced", force_destroy=True, labels=labels, opts=me)
        self.source_objects: dict[str, gcp.storage.BucketObject] = {}
        for unit, directory in sorted(code.items()):
            self.source_objects[unit] = gcp.storage.BucketObject(
                naming.name(f"{unit.replace('_', '-')}-source"), bucket=sources.name,
                name=f"{unit}-{tree_digest(directory)[:16]}.zip", source=pulumi.FileArchive(str(directory)), opts=me)

        def function(purpose: str, unit: str, entry_point: str, environment: dict, *, public: bool = False,
                     timeout: int = 60, vpc: bool = False) -> gcp.cloudfunctionsv2.Function:
            service = {
                "service_account_email": accounts[purpose].email,
                # Internal only: reachable by Pub/Sub push and from the VPC. The webhook alone is
                # public, because chat platforms call it; it authenticates every request itself.
                "ingress_settings": "ALLOW_ALL" if public else "ALLOW_INTERNAL_ONLY",
                "environment_variables": environment, "timeout_seconds": timeout, "max_instance_count": 10,
                "all_traffic_on_latest_revision": True,
            }
            if vpc:
                service["direct_vpc_network_interfaces"] = [{"network": network.network,
                                                             "subnetwork": network.subnetwork}]
                service["direct_vpc_egress"] = "VPC_EGRESS_ALL_TRAFFIC"
            fn = gcp.cloudfunctionsv2.Function(
                naming.name(purpose), name=naming.name(purpose), project=project, location=region, labels=labels,
                build_config={"runtime": RUNTIME, "entry_point": entry_point, "source": {"storage_source": {
                    "bucket": sources.name, "object": self.source_objects[unit].name}}},
                service_config=service, opts=me)
            invoker = "allUsers" if public else member["pusher"]
            gcp.cloudrunv2.ServiceIamMember(naming.name(f"{purpose}-invoker"), project=project, location=region,
                                            name=fn.name, role="roles/run.invoker", member=invoker, opts=me)
            return fn

        def push(purpose: str, source: gcp.pubsub.Topic, target: gcp.cloudfunctionsv2.Function,
                 max_attempts: int) -> gcp.pubsub.Subscription:
            dead = dead_letter_topic(purpose)
            subscription = gcp.pubsub.Subscription(
                naming.name(f"{purpose}-notifier" if purpose == "approvals" else purpose),
                name=naming.name(f"{purpose}-notifier" if purpose == "approvals" else purpose),
                project=project, topic=source.id, ack_deadline_seconds=60, labels=labels,
                push_config={"push_endpoint": target.url, "oidc_token": {
                    "service_account_email": accounts["pusher"].email, "audience": target.url}},
                dead_letter_policy={"dead_letter_topic": dead.id, "max_delivery_attempts": max_attempts},
                retry_policy={"minimum_backoff": "10s", "maximum_backoff": "600s"}, opts=me)
            gcp.pubsub.SubscriptionIAMMember(naming.name(f"{purpose}-agent-ack"), project=project,
                                             subscription=subscription.name, role="roles/pubsub.subscriber",
                                             member=pubsub_agent, opts=me)
            return subscription

        entry = {unit: names for unit, names in GCP_ENTRY_POINTS.items()}
        self.webhook = function("webhook", "approval", entry["approval"][1], {
            env.DECISION_STORE: store_url, env.SIGNING_SECRET: secret_url(signing_secret),
            env.APPROVAL_CHANNEL: stack.approvals.channel,
            env.APPROVER_GROUPS: ",".join(stack.approvals.approver_groups), env.ISSUERS: env.issuers(stack),
            **env.webhook_approvers(stack)},
            public=True)
        notifier_signing = {env.SIGNING_SECRET: secret_url(signing_secret)} if env.notifier_signs(stack) else {}
        notifier = function("notifier", "approval", entry["approval"][0], {
            env.APPROVALS_QUEUE: queue_url, env.DECISION_STORE: store_url,
            env.WEBHOOK_URL_SECRET: secret_url(webhook_url_secret), **notifier_signing, **env.notifier_links(stack),
            env.APPROVAL_CHANNEL: stack.approvals.channel, env.WEBHOOK_ENDPOINT: self.webhook.url})
        push("approvals", approvals_topic, notifier, stack.approvals.max_receives)
        evidence = function("evidence", "evidence_export", entry["evidence_export"][0], {
            env.AUDIT_STORE: audit_url, env.EVIDENCE_STORE: evidence_url, env.SIGNER: signer_url}, timeout=540)
        push("evidence-export", schedule_topic, evidence, 5)
        gcp.cloudscheduler.Job(naming.name("evidence-export"), name=naming.name("evidence-export"), project=project,
                               region=region, schedule=f"0 {stack.audit.evidence_export_hour_utc} * * *",
                               time_zone="Etc/UTC", pubsub_target={"topic_name": schedule_topic.id,
                                                                   "data": "e30="},  # base64 of "{}"
                               opts=me)
        if rotated:
            rotation_urls = pulumi.Output.all(**{n: secret_url(db_secrets[n]) for n, r in stack.resources.items()
                                                 if r.rotate_days}).apply(
                lambda urls: env.rotation_resources(stack, dict(urls)))
            rotation = function("rotation", "key_rotation", entry["key_rotation"][0],
                                {env.ROTATION_RESOURCES: rotation_urls}, timeout=120, vpc=True)
            push("secret-rotation", rotation_topic, rotation, 5)
            # Secret Manager notifies only at rotation time; this makes retirement prompt after the grace.
            for n, r in sorted(stack.resources.items()):
                if r.rotate_days:
                    gcp.cloudscheduler.Job(
                        naming.name(f"retire-{n}"), name=naming.name(f"retire-{n}"), project=project, region=region,
                        schedule=RETIRE_SCHEDULE, time_zone="Etc/UTC",
                        # A body is required too: functions-framework treats a push without
                        # message.data as not Pub/Sub and refuses to convert it to a CloudEvent.
                        pubsub_target={"topic_name": rotation_topic.id, "data": "e30=", "attributes": {
                            "eventType": RETIRE_EVENT, "secretId": db_secrets[n].id}}, opts=me)

        # The gateway: VMs behind an internal passthrough TCP load balancer (gateway.py says why).
        wiring = pulumi.Output.all(queue_url, store_url, signer_url, self.webhook.url, secret_url(masking_key),
                                   pulumi.Output.all(**{n: secret_url(s) for n, s in db_secrets.items()})).apply(
            lambda v: GatewayWiring(audit_archive=audit_url, signer=v[2], approvals_queue=v[0], decision_store=v[1],
                                    approvals_public_url=v[3], masking_key=v[4], resource_passwords=dict(v[5]),
                                    tls_cert_file=TLS_FROM_ENV_FILES["cert"], tls_key_file=TLS_FROM_ENV_FILES["key"],
                                    # Reached by Google's health checkers (firewalled to their ranges).
                                    control_address=f"0.0.0.0:{CONTROL_PORT}"))
        self.gateway_config = wiring.apply(lambda w: render_gateway_config(stack, w))
        self.gateway = GatewayGroup(
            naming.name("gateway-group"), stack=stack, naming=naming, project=project, network=network,
            service_account=accounts["gateway"], config_yaml=self.gateway_config,
            tls_secrets={part: item.id for part, item in tls.items()}, disk_key=data_key.id,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[compute_agent]))

        # Auditors: read the bucket, verify signatures, read decisions; change nothing.
        for index, auditor in enumerate(stack.auditors):
            gcp.storage.BucketIAMMember(naming.name(f"auditor-{index}-bucket"), bucket=self.audit_bucket.name,
                                        role="roles/storage.objectViewer", member=auditor, opts=me)
            gcp.kms.CryptoKeyIAMMember(naming.name(f"auditor-{index}-key"), crypto_key_id=signing_key.id,
                                       role="roles/cloudkms.publicKeyViewer", member=auditor, opts=me)
            firestore_grant(f"auditor-{index}-decisions", "roles/datastore.viewer", auditor)

        self.outputs = {
            "gateway_address": self.gateway.forwarding_rule.ip_address,
            "audit_bucket": self.audit_bucket.name,
            "signing_key": signing_key.id,
            "webhook_url": self.webhook.url,
            "secrets_to_fill": {s_name: s.id for s_name, s in [
                *((f"db-{n}", s) for n, s in db_secrets.items()), ("masking-key", masking_key),
                ("approver-webhook-url", webhook_url_secret), ("approver-signing-secret", signing_secret),
                ("gateway-tls-cert", tls["cert"]), ("gateway-tls-key", tls["key"])]},
        }
        self.register_outputs(self.outputs)


def deploy(stack: StackConfig, *, functions_dir: Path | None = None, build_dir: Path | None = None) -> WardgateGcp:
    """Package the functions (``functions/build.py``) and declare the environment."""
    code = build("gcp", build_dir or DEFAULT_BUILD_DIR, functions_dir=functions_dir)
    return WardgateGcp(Naming(stack.environment).name("gcp"), stack, code)
