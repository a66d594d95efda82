//! The Lambda service on one machine: `cargo lambda watch --only-lambda-apis`, the Runtime API
//! emulator, with the function's real binary running against it. Events go in over HTTP as
//! they would through Lambda's Invoke API.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A child process that is killed when dropped, however the caller ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The emulator and the function running under it.
pub struct LocalLambda {
    _emulator: Running,
    /// Behind a lock so that `invoke(&self)` can notice the function exiting.
    function: Mutex<Running>,
    port: u16,
}

impl LocalLambda {
    /// Starts the emulator on a free port, then `binary` with this process's environment, `env`
    /// and the variables Lambda sets; the function's stdout and stderr go where the caller says.
    pub async fn start(
        binary: &Path,
        env: &[(&str, String)],
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<Self, String> {
        Self::spawn(binary, env, stdout, stderr, false).await
    }

    /// Like [`LocalLambda::start`], but the function inherits nothing from this process: it sees
    /// `env` and the variables Lambda sets, as a deployed function sees only its configuration.
    pub async fn start_isolated(
        binary: &Path,
        env: &[(&str, String)],
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<Self, String> {
        Self::spawn(binary, env, stdout, stderr, true).await
    }

    async fn spawn(
        binary: &Path,
        env: &[(&str, String)],
        stdout: Stdio,
        stderr: Stdio,
        isolated: bool,
    ) -> Result<Self, String> {
        let port =
            TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let cargo_lambda = std::env::var("CARGO_LAMBDA").unwrap_or_else(|_| "cargo-lambda".into());
        let emulator = Command::new(&cargo_lambda)
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
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {cargo_lambda} ({e}); `make venv` installs cargo-lambda"))?;
        let emulator = Running(emulator);
        wait_for_port(port).await?;
        let mut function = Command::new(binary);
        if isolated {
            function.env_clear();
        }
        let function = function
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{port}/.rt"))
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
            .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {} ({e}); build it first", binary.display()))?;
        Ok(Self { _emulator: emulator, function: Mutex::new(Running(function)), port })
    }

    /// Invokes the function with `event` and returns its response. A function that exits
    /// instead of answering (a bad setting at cold start, say) is an error at once, not after
    /// the emulator's timeout.
    pub async fn invoke(&self, event: &Value) -> Result<Value, String> {
        let url = format!("http://127.0.0.1:{}/2015-03-31/functions/_/invocations", self.port);
        let request = reqwest::Client::new().post(url).json(event).timeout(Duration::from_secs(300)).send();
        let response = tokio::select! {
            response = request => response.map_err(|e| format!("the Runtime API emulator did not answer: {e}"))?,
            status = self.exit() => return Err(format!("the function exited ({status}) instead of answering")),
        };
        response.json().await.map_err(|e| format!("the function's response is not JSON: {e}"))
    }

    /// Resolves when the function's process has exited.
    async fn exit(&self) -> ExitStatus {
        loop {
            if let Some(status) = self.function.lock().unwrap().0.try_wait().ok().flatten() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The function's exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.function.get_mut().unwrap().0.try_wait().ok().flatten()
    }

    /// Sends SIGTERM, as Lambda does at shutdown, and waits up to five seconds for the exit.
    pub fn terminate(mut self) {
        let pid = self.function.get_mut().unwrap().0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

async fn wait_for_port(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            return Err(format!("the Runtime API emulator did not listen on port {port}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
