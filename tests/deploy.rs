//! template.yaml, proven. SAM's own translator turns it into CloudFormation, which is created as a
//! stack in moto's CloudFormation with the parameters `sam deploy --guided` would be given; then
//! the real `bootstrap` runs with the environment that stack gave the function, against the
//! stack's own queue, dead-letter queue, bucket and secrets, and relays one export end to end.
//! `tests/deploy/stack.py` translates and deploys. A second test holds the function's role to
//! exactly what the code calls.

#[path = "api/helpers.rs"]
mod helpers;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use dealmachine_sim::{ExportSpec, FileSpec, LocalLambda, Receiver, SimOptions, Simulator, Status};
use helpers::{WEBHOOK_SECRET, assert_valid_event, sha256, test_s3_client};
use serde_json::{Value, json};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The template's default `DestinationPrefix`.
const PREFIX: &str = "dealmachine/exports/";

/// A record that can never succeed: the function sets it aside on the dead-letter queue.
const POISON: &str = "not an export id";

/// What moto's CloudFormation (moto 5.2) does not implement, so `stack.py` creates it through
/// moto's own APIs: the alarms and the sweep schedule always, and the secrets when the stack
/// makes them. Nothing the relay reads is left out.
const ALWAYS_SKIPPED: [&str; 7] = [
    "DeadLetterQueueAlarm",
    "FunctionErrorsAlarm",
    "FunctionThrottlesAlarm",
    "QueueAgeAlarm",
    "WebhookFailuresAlarm",
    "ApiKeyRefusedAlarm",
    "RelayFunctionSchedule",
];

fn files() -> Vec<FileSpec> {
    vec![FileSpec::csv("properties.csv.gz", 7, 300), FileSpec::csv("owners.csv", 8, 40)]
}

/// A name no other test uses, short enough for the names CloudFormation derives from it.
fn unique(what: &str) -> String {
    format!("{what}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

#[tokio::test]
async fn the_stack_at_its_defaults_relays_an_export_from_its_queue_to_its_bucket_and_the_webhook() {
    let world = World::start().await;
    // `sam deploy --guided`, answering only what has no default, and pointing the API, the
    // downloads and the webhook at the local stand-ins.
    let stack = Stack::deploy(&world.parameters(json!({
        "DealMachineApiKey": world.sim.api_key(),
        "WebhookSecret": WEBHOOK_SECRET,
    })))
    .await;

    let mut skipped = vec!["ApiKeySecret", "WebhookSigningSecret"];
    skipped.extend(ALWAYS_SKIPPED);
    assert_eq!(stack.skipped(), skipped);
    let bucket = stack.output("BucketName");

    let (_, hook) = world.relay_one_export(&stack, &bucket, ExportSpec::completed(files())).await;
    assert_eq!(hook["data"]["files"][0]["url"], serde_json::Value::Null, "no presigned link by default");
}

#[tokio::test]
async fn the_stack_with_an_existing_bucket_secrets_by_arn_and_presigned_links_relays_an_export() {
    let world = World::start().await;
    let bucket = unique("existing");
    world.s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let api_key_arn = world.secret("api-key", world.sim.api_key()).await;
    let webhook_secret_arn = world.secret("webhook", WEBHOOK_SECRET).await;
    let stack = Stack::deploy(&world.parameters(json!({
        "DestinationBucketName": bucket,
        "DealMachineApiKeySecretArn": api_key_arn,
        "WebhookSecretArn": webhook_secret_arn,
        "PresignTtlSeconds": "3600",
        // So the export below, still processing at first, is polled again within a second.
        "PollInitialDelaySeconds": "1",
    })))
    .await;

    assert_eq!(stack.skipped(), ALWAYS_SKIPPED, "the stack creates no secret");
    assert_eq!(stack.output("BucketName"), bucket);

    // Processing at first: the function re-enqueues it on the stack's queue.
    let export = ExportSpec::scripted(&[Status::Processing, Status::Completed], files());
    let (id, hook) = world.relay_one_export(&stack, &bucket, export).await;
    for (filename, measured) in world.sim.files(&id) {
        let file =
            hook["data"]["files"].as_array().unwrap().iter().find(|f| f["filename"] == filename.as_str());
        let url = file.and_then(|f| f["url"].as_str()).expect("a presigned link");
        let bytes =
            reqwest::get(url).await.unwrap().error_for_status().expect("the link works").bytes().await;
        assert_eq!(sha256(&bytes.unwrap()), measured.sha256, "the link serves {filename}");
    }
}

/// The stand-ins the stack is pointed at: the DealMachine simulator and its file host, a
/// webhook receiver that checks signatures, and moto (started by `scripts/with-moto.sh`).
struct World {
    sim: Simulator,
    receiver: Receiver,
    s3: aws_sdk_s3::Client,
    sqs: aws_sdk_sqs::Client,
    secrets: aws_sdk_secretsmanager::Client,
}

impl World {
    async fn start() -> Self {
        std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL is not set: run this with `make test`");
        let loopback = "127.0.0.1:0".parse().unwrap();
        let sim = Simulator::start(SimOptions::default(), loopback).await.unwrap();
        let receiver = Receiver::start(WEBHOOK_SECRET, loopback, true).await.unwrap();
        let aws = export_relay::startup::aws_config().await;
        Self {
            sim,
            receiver,
            s3: test_s3_client(&aws),
            sqs: aws_sdk_sqs::Client::new(&aws),
            secrets: aws_sdk_secretsmanager::Client::new(&aws),
        }
    }

    /// The stack's parameters: `answers`, and what any local deployment needs. Every other
    /// parameter keeps its default, as when `sam deploy --guided` is answered with Enter.
    fn parameters(&self, answers: Value) -> Value {
        let mut parameters = json!({
            "DealMachineApiUrl": self.sim.api_url(),
            "DownloadHosts": "127.0.0.1",
            "WebhookUrl": self.receiver.url(),
            // Local stand-ins speak http and need path-style S3 URLs.
            "AllowInsecureHttp": "true",
            "S3ForcePathStyle": "true",
        });
        parameters.as_object_mut().unwrap().extend(answers.as_object().unwrap().clone());
        parameters
    }

    async fn secret(&self, name: &str, value: &str) -> String {
        let output = self.secrets.create_secret().name(unique(name)).secret_string(value).send().await;
        output.unwrap().arn.unwrap()
    }

    /// Messages on `queue_url`, counted without receiving them.
    async fn waiting(&self, queue_url: &str) -> u64 {
        let name = QueueAttributeName::ApproximateNumberOfMessages;
        let output = self.sqs.get_queue_attributes().queue_url(queue_url).attribute_names(name.clone());
        let attributes = output.send().await.unwrap().attributes.unwrap_or_default();
        attributes.get(&name).map_or(0, |n| n.parse().unwrap())
    }

    /// Puts `export` on the stack's queue, with a record that can never succeed, and runs the
    /// function as Lambda's poller would until the export's webhook arrives; then checks what
    /// reached the bucket, the webhook and the dead-letter queue. Returns the export's ID and
    /// the webhook's body.
    async fn relay_one_export(&self, stack: &Stack, bucket: &str, export: ExportSpec) -> (String, Value) {
        let id = self.sim.add_export(export);
        let body = json!({"export_id": id, "metadata": {"from": "deploy test"}}).to_string();
        for body in [body.as_str(), POISON] {
            self.sqs
                .send_message()
                .queue_url(stack.output("QueueUrl"))
                .message_body(body)
                .send()
                .await
                .unwrap();
        }

        let function = stack.start_function().await;
        let mut logs = String::new();
        for round in 1.. {
            assert!(round <= 5, "no webhook after {} rounds: {logs}", round - 1);
            let response;
            (response, logs) = function.poll(self).await;
            assert_eq!(response, json!({"batchItemFailures": []}), "{logs}");
            if !self.receiver.received().is_empty()
                && self.waiting(&stack.output("DeadLetterQueueUrl")).await > 0
            {
                break;
            }
        }

        let hooks = self.receiver.received();
        assert_eq!(hooks.len(), 1, "one webhook: {logs}");
        let hook = &hooks[0];
        assert!(hook.verified, "the webhook is signed with the stack's secret");
        assert_valid_event(&hook.body);
        assert_eq!(hook.body["type"], "export.completed");
        assert_eq!(hook.body["data"]["export_id"], id.as_str());
        assert_eq!(hook.body["data"]["metadata"], json!({"from": "deploy test"}));

        for (filename, measured) in self.sim.files(&id) {
            let key = format!("{PREFIX}{id}/{filename}");
            let object = self.s3.get_object().bucket(bucket).key(&key).send().await;
            let bytes =
                object.unwrap_or_else(|e| panic!("{key} is in {bucket}: {e:?}\n{logs}")).body.collect();
            assert_eq!(sha256(&bytes.await.unwrap().into_bytes()), measured.sha256, "{key}");
        }
        let manifest = format!("{PREFIX}{id}/manifest.json");
        assert!(self.s3.head_object().bucket(bucket).key(&manifest).send().await.is_ok(), "committed");

        let left = self.sqs.receive_message().queue_url(stack.output("QueueUrl")).send().await.unwrap();
        assert!(left.messages().is_empty(), "the records were acknowledged");
        let set_aside = self
            .sqs
            .receive_message()
            .queue_url(stack.output("DeadLetterQueueUrl"))
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        let [record] = set_aside.messages() else { panic!("one record on the dead-letter queue: {logs}") };
        assert_eq!(record.body(), Some(POISON));
        assert_eq!(
            record.message_attributes().unwrap()["error_code"].string_value(),
            Some("invalid_export_id")
        );
        (id, hook.body.clone())
    }
}

/// A stack `tests/deploy/stack.py` created in moto, as it describes it.
struct Stack(Value);

impl Stack {
    async fn deploy(parameters: &Value) -> Self {
        Self(stack_py(&["deploy", &unique("relay"), &parameters.to_string()]).await)
    }

    fn output(&self, key: &str) -> String {
        self.0["outputs"][key].as_str().unwrap_or_else(|| panic!("no output {key}")).to_string()
    }

    /// The resources moto skipped, which `stack.py` created through moto's APIs instead.
    fn skipped(&self) -> Vec<&str> {
        self.0["skipped"].as_array().unwrap().iter().map(|s| s["logical_id"].as_str().unwrap()).collect()
    }

    /// The bootstrap binary with the environment moto's Lambda holds for the stack's function
    /// (CloudFormation's numbers become strings, as Lambda stores them), plus what Lambda gives
    /// every function: its region and credentials, here for moto, and moto's endpoint.
    async fn start_function(&self) -> Function {
        let mut env: Vec<(&str, String)> = Vec::new();
        for (name, value) in self.0["function"]["environment"].as_object().unwrap() {
            let value = value.as_str().map_or_else(|| value.to_string(), str::to_string);
            env.push((name.as_str(), value));
        }
        for name in [
            "AWS_ENDPOINT_URL",
            "AWS_REGION",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
        ] {
            env.extend(std::env::var(name).ok().map(|value| (name, value)));
        }
        let name = self.0["stack"].as_str().unwrap();
        let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("deploy-{name}.log"));
        let stdout = std::fs::File::create(&log).unwrap();
        let stderr = stdout.try_clone().unwrap();
        let binary = Path::new(env!("CARGO_BIN_EXE_bootstrap"));
        let lambda = LocalLambda::start_isolated(binary, &env, stdout.into(), stderr.into()).await.unwrap();
        let sources = self.0["event_sources"].as_array().unwrap();
        assert_eq!(sources.len(), 1, "one event source mapping: {sources:?}");
        Function { lambda, log: log.display().to_string(), source: sources[0].clone() }
    }
}

/// The function under the Runtime API emulator, and the event source mapping moto holds for it.
struct Function {
    lambda: LocalLambda,
    log: String,
    source: Value,
}

impl Function {
    /// One round of Lambda's SQS poller, as the mapping describes it: a batch from its queue,
    /// one invocation, and a delete of each record the function did not report as failed.
    /// Returns the function's response and its log.
    async fn poll(&self, world: &World) -> (Value, String) {
        let queue_arn = self.source["queue_arn"].as_str().unwrap();
        let region = std::env::var("AWS_REGION").unwrap();
        let queue_name = queue_arn.rsplit(':').next().unwrap();
        let queue_url =
            world.sqs.get_queue_url().queue_name(queue_name).send().await.unwrap().queue_url.unwrap();
        let received = world
            .sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(self.source["batch_size"].as_i64().unwrap().min(10) as i32)
            .wait_time_seconds(5)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        let records: Vec<Value> = received
            .messages()
            .iter()
            .map(|m| {
                let attributes: BTreeMap<String, String> = m
                    .attributes()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                    .collect();
                json!({
                    "messageId": m.message_id(), "receiptHandle": m.receipt_handle(), "body": m.body(),
                    "attributes": attributes, "messageAttributes": {}, "md5OfBody": m.md5_of_body(),
                    "eventSource": "aws:sqs", "eventSourceARN": queue_arn, "awsRegion": region,
                })
            })
            .collect();
        assert!(!records.is_empty(), "a record arrives on the mapping's queue");
        let log = || format!("function log ({}):\n{}", self.log, std::fs::read_to_string(&self.log).unwrap());
        let response = self.lambda.invoke(&json!({"Records": records})).await;
        let response = response.unwrap_or_else(|e| panic!("{e}\n{}", log()));

        let reports = self.source["function_response_types"].as_array().unwrap();
        assert_eq!(reports, &[json!("ReportBatchItemFailures")]);
        let failed: Vec<&str> = response["batchItemFailures"]
            .as_array()
            .map(|f| f.iter().filter_map(|f| f["itemIdentifier"].as_str()).collect())
            .unwrap_or_default();
        for message in received.messages() {
            if !failed.contains(&message.message_id().unwrap()) {
                let handle = message.receipt_handle().unwrap();
                world.sqs.delete_message().queue_url(&queue_url).receipt_handle(handle).send().await.unwrap();
            }
        }
        (response, log())
    }
}

/// Runs `tests/deploy/stack.py` with the virtualenv's Python and returns its JSON answer.
async fn stack_py(args: &[&str]) -> Value {
    let python = format!("{ROOT}/.venv/bin/python3");
    let output = tokio::process::Command::new(&python)
        .arg(format!("{ROOT}/tests/deploy/stack.py"))
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{python} runs ({e}); `make venv` installs aws-sam-translator and moto"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stack.py {}: {stderr}", args[0]);
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("stack.py answers JSON ({e}): {stderr}"))
}

// --- Least privilege -----------------------------------------------------------------------------

/// Every AWS operation the function's code may call, and the IAM actions it needs. A call in
/// `src/` missing here fails `the_function_role_grants_exactly_what_the_code_calls`.
const CALLS: [(&str, &[&str]); 11] = [
    ("get_secret_value", &["secretsmanager:GetSecretValue"]),
    ("send_message", &["sqs:SendMessage"]),
    ("change_message_visibility", &["sqs:ChangeMessageVisibility"]),
    ("get_queue_url", &["sqs:GetQueueUrl"]),
    ("put_object", &["s3:PutObject"]),
    ("create_multipart_upload", &["s3:PutObject"]),
    ("upload_part", &["s3:PutObject"]),
    ("complete_multipart_upload", &["s3:PutObject"]),
    ("abort_multipart_upload", &["s3:AbortMultipartUpload"]),
    // S3 answers a missing key with 404 only to a caller that may list the bucket, else 403.
    ("get_object", &["s3:GetObject", "s3:ListBucket"]),
    ("head_object", &["s3:GetObject", "s3:ListBucket"]),
];

/// What Lambda's SQS event source mapping does with the function's role.
const EVENT_SOURCE: [&str; 3] = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"];

/// Every grant of the function's role: action, resource and condition in the template's own
/// terms, and the stack condition under which the grant exists. Nothing else is allowed.
const GRANTS: [(&str, &str, &str, &str); 16] = [
    (
        "secretsmanager:GetSecretValue",
        "If(HasApiKeySecretArn, DealMachineApiKeySecretArn, ApiKeySecret)",
        "",
        "",
    ),
    (
        "secretsmanager:GetSecretValue",
        "If(HasWebhookSecretArn, WebhookSecretArn, WebhookSigningSecret)",
        "",
        "UseWebhookSecret",
    ),
    ("sqs:SendMessage", "RelayQueue.Arn", "", ""),
    ("sqs:SendMessage", "DeadLetterQueue.Arn", "", ""),
    ("sqs:ReceiveMessage", "RelayQueue.Arn", "", ""),
    ("sqs:DeleteMessage", "RelayQueue.Arn", "", ""),
    ("sqs:GetQueueAttributes", "RelayQueue.Arn", "", ""),
    ("sqs:ChangeMessageVisibility", "RelayQueue.Arn", "", ""),
    ("sqs:GetQueueUrl", "RelayQueue.Arn", "", ""),
    ("s3:PutObject", OBJECTS, "", ""),
    ("s3:GetObject", OBJECTS, "", ""),
    ("s3:AbortMultipartUpload", OBJECTS, "", ""),
    ("s3:ListBucket", BUCKET, r#"{"StringLike":{"s3:prefix":"${DestinationPrefix}*"}}"#, ""),
    ("kms:GenerateDataKey", "QueueKmsKeyArn", VIA_SQS, "HasQueueKmsKey"),
    ("kms:Decrypt", "QueueKmsKeyArn", VIA_SQS, "HasQueueKmsKey"),
    ("kms:Decrypt", "SecretsKmsKeyArn", VIA_SECRETS_MANAGER, "HasSecretsKmsKey"),
];
const OBJECTS: &str = "arn:${AWS::Partition}:s3:::${If(CreateBucket, ExportBucket, DestinationBucketName)}/${DestinationPrefix}*";
const BUCKET: &str = "arn:${AWS::Partition}:s3:::${If(CreateBucket, ExportBucket, DestinationBucketName)}";
const VIA_SQS: &str = r#"{"StringEquals":{"kms:ViaService":"sqs.${AWS::Region}.amazonaws.com"}}"#;
const VIA_SECRETS_MANAGER: &str =
    r#"{"StringEquals":{"kms:ViaService":"secretsmanager.${AWS::Region}.amazonaws.com"}}"#;
/// Log lines to CloudWatch Logs: logs:CreateLogGroup, logs:CreateLogStream, logs:PutLogEvents.
const MANAGED: &str = "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole";

#[tokio::test]
async fn the_function_role_grants_exactly_what_the_code_calls() {
    let template = stack_py(&["translate"]).await;
    let resources = template["Resources"].as_object().unwrap();
    let (function, _) = resources.iter().find(|(_, r)| r["Type"] == "AWS::Lambda::Function").unwrap();
    let role = render(&resources[function]["Properties"]["Role"]);
    let role =
        role.strip_suffix(".Arn").unwrap_or_else(|| panic!("the function's role is the stack's: {role}"));
    let trust = &resources[role]["Properties"]["AssumeRolePolicyDocument"]["Statement"];
    assert_eq!(trust.as_array().unwrap().len(), 1, "one trust statement");
    assert_eq!(trust[0]["Principal"].as_object().unwrap().len(), 1, "only a service assumes it");
    assert_eq!(one_or_many(&trust[0]["Principal"]["Service"]), [&json!("lambda.amazonaws.com")]);
    let managed: Vec<String> =
        resources[role]["Properties"]["ManagedPolicyArns"].as_array().unwrap().iter().map(render).collect();
    assert_eq!(managed, [MANAGED]);

    let mut granted = BTreeSet::new();
    for (policy, when) in policies_of(resources, role) {
        for statement in policy["Statement"].as_array().unwrap() {
            assert_eq!(statement["Effect"], "Allow");
            let actions = one_or_many(&statement["Action"]);
            let condition =
                statement.get("Condition").map(|c| render_json(c).to_string()).unwrap_or_default();
            for resource in one_or_many(&statement["Resource"]) {
                for action in &actions {
                    let grant = (render(action), render(resource), condition.clone(), when.clone());
                    assert!(granted.insert(grant.clone()), "granted twice: {grant:?}");
                }
            }
        }
    }
    let expected: BTreeSet<(String, String, String, String)> = GRANTS
        .iter()
        .map(|(a, r, c, w)| (a.to_string(), r.to_string(), c.to_string(), w.to_string()))
        .collect();
    let extra: Vec<_> = granted.difference(&expected).collect();
    let lacking: Vec<_> = expected.difference(&granted).collect();
    assert!(extra.is_empty() && lacking.is_empty(), "the role grants {extra:#?}\nbut not {lacking:#?}");

    // And the grants are what the code needs: each call in src/, the poller, the keys.
    let mut needed: BTreeSet<&str> = EVENT_SOURCE.into_iter().collect();
    for call in aws_calls_in_src() {
        let (_, actions) = CALLS.iter().find(|(name, _)| *name == call).unwrap_or_else(|| {
            panic!("src/ calls {call}(): add the IAM action it needs to RelayFunctionRole and to CALLS here")
        });
        needed.extend(actions.iter());
    }
    let granted_actions: BTreeSet<&str> =
        granted.iter().map(|g| g.0.as_str()).filter(|a| !a.starts_with("kms:")).collect();
    assert_eq!(granted_actions, needed, "the role grants exactly what src/ and the event source need");
}

/// The policy documents attached to `role`, each with the stack condition it exists under.
fn policies_of<'a>(resources: &'a serde_json::Map<String, Value>, role: &str) -> Vec<(&'a Value, String)> {
    let mut found: Vec<(&Value, String)> = resources[role]["Properties"]["Policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (&p["PolicyDocument"], String::new()))
        .collect();
    for (name, resource) in resources {
        let kind = resource["Type"].as_str().unwrap();
        let properties = &resource["Properties"];
        let mut attached =
            properties["Roles"].as_array().into_iter().flatten().chain(properties.get("RoleName"));
        if attached.any(|r| render(r) == role) {
            assert!(
                matches!(kind, "AWS::IAM::Policy" | "AWS::IAM::RolePolicy"),
                "{name} ({kind}) grants the role more"
            );
            let when = resource["Condition"].as_str().unwrap_or_default().to_string();
            found.push((&resource["Properties"]["PolicyDocument"], when));
        }
    }
    found
}

/// The operation names of the AWS SDK crates export-relay depends on, as `.name()` calls found
/// in `src/`. Names come from the crates' own `src/operation/` folders, so no call is missed.
fn aws_calls_in_src() -> BTreeSet<String> {
    // Only this platform's packages: the build has downloaded those already.
    let rustc = std::process::Command::new("rustc").arg("-vV").output().expect("rustc runs");
    let rustc = String::from_utf8(rustc.stdout).unwrap();
    let host = rustc.lines().find_map(|l| l.strip_prefix("host: ")).expect("rustc names its host");
    let metadata = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--filter-platform", host])
        .arg("--manifest-path")
        .arg(format!("{ROOT}/Cargo.toml"))
        .output()
        .unwrap();
    assert!(metadata.status.success(), "{}", String::from_utf8_lossy(&metadata.stderr));
    let metadata: Value = serde_json::from_slice(&metadata.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let root = packages.iter().find(|p| p["name"] == "export-relay").unwrap();
    let mut operations = BTreeSet::new();
    for dependency in root["dependencies"].as_array().unwrap() {
        let name = dependency["name"].as_str().unwrap();
        if !name.starts_with("aws-sdk-") || !dependency["kind"].is_null() {
            continue;
        }
        let package = packages.iter().find(|p| p["name"] == name).unwrap();
        let folder = Path::new(package["manifest_path"].as_str().unwrap()).with_file_name("src/operation");
        for entry in std::fs::read_dir(&folder).unwrap_or_else(|e| panic!("{}: {e}", folder.display())) {
            let file = entry.unwrap().file_name().into_string().unwrap();
            if let Some(operation) = file.strip_suffix(".rs") {
                operations.insert(operation.to_string());
            }
        }
    }
    assert!(operations.contains("send_message") && operations.contains("get_object"));

    let mut source = String::new();
    let mut folders = vec![Path::new(ROOT).join("src")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                source.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    // Builder chains span lines: `self.s3\n    .put_object()`.
    let source: String = source.chars().filter(|c| !c.is_whitespace()).collect();
    operations.into_iter().filter(|op| source.contains(&format!(".{op}()"))).collect()
}

fn one_or_many(value: &Value) -> Vec<&Value> {
    match value.as_array() {
        Some(items) => items.iter().collect(),
        None => vec![value],
    }
}

/// An intrinsic function as a short string: `Ref X` is `X`, `GetAtt X.Y` is `X.Y`, `If` is
/// `If(condition, yes, no)`, and `Sub` its text with its variables filled in.
fn render(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Object(o) if o.contains_key("Ref") => render(&o["Ref"]),
        Value::Object(o) if o.contains_key("Fn::GetAtt") => {
            let parts: Vec<String> = o["Fn::GetAtt"].as_array().unwrap().iter().map(render).collect();
            parts.join(".")
        }
        Value::Object(o) if o.contains_key("Fn::If") => {
            let parts: Vec<String> = o["Fn::If"].as_array().unwrap().iter().map(render).collect();
            format!("If({})", parts.join(", "))
        }
        Value::Object(o) if o.contains_key("Fn::Sub") => match &o["Fn::Sub"] {
            Value::Array(args) => {
                let mut text = render(&args[0]);
                for (name, value) in args[1].as_object().unwrap() {
                    text = text.replace(&format!("${{{name}}}"), &format!("${{{}}}", render(value)));
                }
                text
            }
            text => render(text),
        },
        other => other.to_string(),
    }
}

/// `value` with every intrinsic function in it rendered.
fn render_json(value: &Value) -> Value {
    match value {
        Value::Object(o) if o.keys().any(|k| k == "Ref" || k.starts_with("Fn::")) => {
            Value::String(render(value))
        }
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), render_json(v))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(render_json).collect()),
        other => other.clone(),
    }
}
