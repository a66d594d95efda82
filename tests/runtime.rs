//! The real Lambda binary, driven through the Lambda Runtime API by `cargo lambda watch`, as
//! AWS would drive it: the event goes in over HTTP, the batch response comes back.

#[path = "api/helpers.rs"]
mod helpers;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dealmachine_sim::FileSpec;
use helpers::{sha256, spawn_app, sqs_event};

/// Kills the process when the test ends, whichever way it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cargo_lambda() -> String {
    std::env::var("CARGO_LAMBDA").unwrap_or_else(|_| "cargo-lambda".into())
}

async fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the Runtime API emulator did not start on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `cargo lambda watch --only-lambda-apis` and the bootstrap binary against it.
async fn start_function(env: &[(&'static str, String)]) -> (Running, Running, u16) {
    let port = free_port();
    let emulator = Command::new(cargo_lambda())
        .args([
            "lambda",
            "watch",
            "--only-lambda-apis",
            "--timeout",
            "300",
            "-A",
            "127.0.0.1",
            "-P",
            &port.to_string(),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cargo-lambda is installed (make test installs it)");
    let emulator = Running(emulator);
    wait_for_port(port).await;
    let function = Command::new(env!("CARGO_BIN_EXE_bootstrap"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("http://127.0.0.1:{port}/.rt"),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", "_")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .stdout(
            std::fs::File::create(concat!(
                env!("CARGO_TARGET_TMPDIR"),
                "/runtime-function.log"
            ))
            .unwrap(),
        )
        .spawn()
        .expect("the bootstrap binary starts");
    (emulator, Running(function), port)
}

#[tokio::test]
async fn the_lambda_binary_relays_an_sqs_batch_through_the_runtime_api() {
    let app = spawn_app().await;
    let id = app.completed(vec![FileSpec::csv("a.csv.gz", 9, 2000)]);
    let (_emulator, _function, port) = start_function(&app.env).await;

    let response: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/2015-03-31/functions/_/invocations"
        ))
        .json(&sqs_event(&[&id, "not json {"]))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("the emulator answers")
        .json()
        .await
        .expect("a JSON batch response");

    assert_eq!(response, serde_json::json!({"batchItemFailures": []}));
    let (bytes, _) = app
        .object(&app.key(&id, "a.csv.gz"))
        .await
        .expect("the file is in S3");
    assert_eq!(sha256(&bytes), app.sim.files(&id)[0].1.sha256);
    assert_eq!(app.webhooks()[0].body["type"], "export.completed");
    assert_eq!(
        app.receive(&app.dlq_url, Duration::from_secs(1))
            .await
            .len(),
        1,
        "the bad record is set aside"
    );
}

#[test]
fn a_missing_setting_stops_the_cold_start_with_one_clear_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_bootstrap"))
        .env_clear()
        .env("DEALMACHINE_API_KEY", "dm_sk_live_secret_value")
        .env("QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/1/q")
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9/.rt")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(all.contains("DESTINATION_BUCKET is not set"), "{all}");
    assert!(
        !all.contains("dm_sk_live_secret_value"),
        "the key never shows: {all}"
    );
}
