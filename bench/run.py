"""`make bench`: every benchmark of issue 8, and the polling table of issue 18, on 127.0.0.1.

Writes bench/results.json (raw numbers), bench/benchmarks.png and BENCHMARKS.md (both made from
results.json by bench/report.py). Sizes and runs can be cut down while iterating:

    BENCH_SIZES=64 BENCH_RUNS=1 BENCH_PARTS=skip python bench/run.py

One part can be measured again alone, keeping the rest of results.json:

    python bench/run.py --only poll-timing      # or init, sizes

BENCH_EXAMPLES_DIR points at other builds of the examples (`target/debug/examples`, say).

BENCH_PROFILE=quick picks binaries built with a faster, non-LTO profile, for experiments only
(the numbers in BENCHMARKS.md come from the release profile). BENCH_SECTIONS lists what runs
(default: everything).
"""

import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
PROFILE = os.environ.get("BENCH_PROFILE", "release")
EXAMPLES = Path(os.environ.get("BENCH_EXAMPLES_DIR", TARGET / PROFILE / "examples"))
BOOTSTRAP = TARGET / "release" / "bootstrap"
VENV = ROOT / ".venv-bench" / "bin"
PY = str(VENV / "python")
S3S = ROOT / ".bench-tools" / "bin" / "s3s-fs"
MOTO = ROOT / ".venv" / "bin" / "moto_server"
DATA = TARGET / "bench-data"
S3ROOT = TARGET / "bench-s3"
MIB = 1024 * 1024

SIZES = [int(s) for s in os.environ.get("BENCH_SIZES", "64,256,1024").split(",")]
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
TUNE = os.environ.get("BENCH_PARTS", "5x2,5x4,5x8,8x2,8x4,8x8,16x2,16x4,16x8")
TUNE_SIZE = int(os.environ.get("BENCH_TUNE_SIZE", "256"))
TUNE_RUNS = int(os.environ.get("BENCH_TUNE_RUNS", str(RUNS)))
POLL_BATCHES = int(os.environ.get("BENCH_POLL_BATCHES", "20"))
# Export runs in seconds: 5, 10, 30 minutes and 2 hours at the defaults, scaled down 15 times.
POLL_RUNS = os.environ.get("BENCH_POLL_RUNS", "20,40,120,480")
POLL_REPEATS = os.environ.get("BENCH_POLL_REPEATS", "3")
INIT_RUNS = int(os.environ.get("BENCH_INIT_RUNS", "10"))
SECTIONS = os.environ.get("BENCH_SECTIONS", "copy,where,lambda,tuning,poll,poll-timing,init").split(",")
# Lambda gives a function CPU in proportion to its memory: 1,769 MB buys one vCPU.
LAMBDA_MB = [int(m) for m in os.environ.get("BENCH_LAMBDA_MB", "512,1024,1769,3538").split(",")]
LAMBDA_SIZE = int(os.environ.get("BENCH_LAMBDA_SIZE", "1024"))
LAMBDA_RUNS = int(os.environ.get("BENCH_LAMBDA_RUNS", str(RUNS)))
MB_PER_VCPU = 1769
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
BUCKET = "bench"
CEILING = "curl -o /dev/null"


def log(*args):
    print("[bench]", *args, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, proc, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def stop(proc):
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- the machine


def machine():
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1]) // 1024
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    aws = subprocess.run([str(VENV / "aws"), "--version"], capture_output=True, text=True)
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    import boto3, requests  # noqa: E401 - versions only

    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_mib": mem, "kernel": platform.release(),
        "python": platform.python_version(), "rustc": rustc,
        "aws_cli": (aws.stdout or aws.stderr).strip(), "curl": curl,
        "boto3": boto3.__version__, "requests": requests.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# ---------------------------------------------------------------- copy


def gen_files():
    DATA.mkdir(parents=True, exist_ok=True)
    files = {}
    for mib in SIZES + ([TUNE_SIZE] if TUNE != "skip" else []) + [LAMBDA_SIZE]:
        path = DATA / f"export_{mib}mib.csv.gz"
        meta = DATA / f"export_{mib}mib.json"
        if not (path.exists() and meta.exists()):
            log(f"generating {path.name} (once; cached in {DATA})")
            out = subprocess.run([str(EXAMPLES / "bench_gen"), str(path), str(mib)],
                                 check=True, capture_output=True, text=True).stdout
            meta.write_text(out)
        files[mib] = json.loads(meta.read_text())
    return files


def time_v(cmd, env, quota=None):
    """Runs cmd under /usr/bin/time -v: wall seconds (ours), peak RSS KiB, user+sys seconds.
    With a quota, the process (and so everything it starts) runs inside that CPU group."""
    started = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True,
                       preexec_fn=quota.enter if quota else None)
    wall = time.perf_counter() - started
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({p.returncode}): {p.stderr[-2000:]}")
    err = p.stderr

    def field(name):
        return float(re.search(rf"{re.escape(name)}: ([\d.]+)", err)[1])

    return {"wall": wall, "rss_kib": int(field("Maximum resident set size (kbytes)")),
            "cpu": field("User time (seconds)") + field("System time (seconds)"),
            "stdout": p.stdout}


class S3:
    def __init__(self):
        import boto3

        shutil.rmtree(S3ROOT, ignore_errors=True)
        S3ROOT.mkdir(parents=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(TARGET / "bench-s3s.log", "w")
        self.proc = subprocess.Popen(
            [str(S3S), "--host", "127.0.0.1", "--port", str(self.port),
             "--access-key", "testing", "--secret-key", "testing", str(S3ROOT)],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_http(self.endpoint, self.proc)
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                   aws_access_key_id="testing", aws_secret_access_key="testing")
        self.client.create_bucket(Bucket=BUCKET)

    def check_and_delete(self, key, size):
        head = self.client.head_object(Bucket=BUCKET, Key=key)
        if head["ContentLength"] != size:
            raise RuntimeError(f"{key}: {head['ContentLength']} bytes stored, {size} expected")
        self.client.delete_object(Bucket=BUCKET, Key=key)

    def close(self):
        stop(self.proc)


def aws_env(endpoint):
    env = dict(os.environ)
    env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1",
               AWS_DEFAULT_REGION="us-east-1", PATH=f"{VENV}:{env.get('PATH', '')}")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        env.pop(name, None)
    return env


def contenders(url, size, key, endpoint, part_mib=8, in_flight=4):
    """Each way of copying the file at `url` to `key`; `key`'s name picks our content checks."""
    aws = str(VENV / "aws")
    return {
        "export-relay": [str(EXAMPLES / "bench_copy"), url, str(size), BUCKET, key,
                         str(part_mib), str(in_flight)],
        "curl | aws s3 cp -": ["bash", "-c", f"set -o pipefail; curl -sf '{url}' | "
                               f"'{aws}' s3 cp - 's3://{BUCKET}/{key}' --endpoint-url '{endpoint}'"
                               " --only-show-errors"],
        "python requests+boto3": [PY, str(ROOT / "bench" / "py_copy.py"), url, BUCKET, key],
        CEILING: ["curl", "-sf", url, "-o", "/dev/null"],
    }


def bench_copy(files, s3, source_port):
    env = aws_env(s3.endpoint)
    results = []
    for mib in SIZES:
        size = files[mib]["size"]
        url = f"http://127.0.0.1:{source_port}/export_{mib}mib.csv.gz"
        for run in range(RUNS):
            key = f"copy/{mib}/{run}/export_{mib}mib.csv.gz"
            for name, cmd in contenders(url, size, key, s3.endpoint).items():
                r = time_v(cmd, env)
                if name != CEILING:
                    s3.check_and_delete(key, size)
                r.update(contender=name, mib=mib, size=size, run=run,
                         mib_s=size / MIB / r["wall"])
                log(f"copy {mib} MiB run {run + 1}/{RUNS} {name}: {r['mib_s']:.0f} MiB/s, "
                    f"{r['rss_kib'] / 1024:.1f} MiB RSS, {r['cpu']:.2f} s CPU")
                results.append(r)
    return results


def bench_where(files, s3, source_port):
    """Where our CPU goes on the largest file: each check alone (`bench_checks`, one thread, the
    file from the page cache), and our whole copy with and without the content checks (the same
    bytes under a `.bin` name get the digests but no inflate and no row count)."""
    mib = max(SIZES)
    size = files[mib]["size"]
    checks = [json.loads(subprocess.run([str(EXAMPLES / "bench_checks"), str(DATA / f"export_{mib}mib.csv.gz")],
                                        check=True, capture_output=True, text=True).stdout)
              for _ in range(RUNS)]
    env = aws_env(s3.endpoint)
    url = f"http://127.0.0.1:{source_port}/export_{mib}mib.csv.gz"
    copies = []
    for run in range(RUNS):
        for name in (f"export_{mib}mib.csv.gz", f"export_{mib}mib.bin"):
            key = f"where/{run}/{name}"
            r = time_v(contenders(url, size, key, s3.endpoint)["export-relay"], env)
            s3.check_and_delete(key, size)
            r.update(name=name, run=run, mib=mib, mib_s=size / MIB / r["wall"])
            log(f"where {name} run {run + 1}: {r['cpu']:.2f} s CPU, {r['mib_s']:.0f} MiB/s")
            copies.append(r)
    return {"mib": mib, "size": size, "checks": checks, "copies": copies}


class Quota:
    """A cgroup v1 `cpu` group whose CPU quota is a Lambda's share at `memory_mb`: memory ÷
    1,769 MB vCPUs, enforced every 100 ms period, as Lambda's own (cgroup) limit is."""

    PERIOD_US = 100_000

    def __init__(self, memory_mb):
        self.memory_mb = memory_mb
        self.vcpus = memory_mb / MB_PER_VCPU
        self.path = CGROUP_CPU / f"export-relay-bench-{os.getpid()}-{memory_mb}"
        self.path.mkdir(exist_ok=True)
        (self.path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
        (self.path / "cpu.cfs_quota_us").write_text(str(round(self.PERIOD_US * self.vcpus)))

    def enter(self):
        """Runs in the child between fork and exec: moves it into the group."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def close(self):
        try:
            self.path.rmdir()
        except OSError as e:
            log(f"could not remove {self.path}: {e}")


def bench_lambda(files, s3, source_port):
    """Each contender under a Lambda-shaped CPU quota at each memory size; the S3 server and the
    file source stay outside it. Returns {"skipped": why} if the quota cannot be set."""
    try:
        quotas = [Quota(mb) for mb in LAMBDA_MB]
    except OSError as e:
        log(f"lambda-shaped table skipped: no CPU quota under {CGROUP_CPU} ({e})")
        return {"skipped": f"the CPU quota could not be set under {CGROUP_CPU}: {e}"}
    env = aws_env(s3.endpoint)
    mib = LAMBDA_SIZE
    size = files[mib]["size"]
    url = f"http://127.0.0.1:{source_port}/export_{mib}mib.csv.gz"
    results = []
    try:
        for run in range(LAMBDA_RUNS):
            for quota in quotas:
                key = f"lambda/{quota.memory_mb}/{run}/export_{mib}mib.csv.gz"
                for name, cmd in contenders(url, size, key, s3.endpoint).items():
                    if name == CEILING:
                        continue
                    r = time_v(cmd, env, quota)
                    s3.check_and_delete(key, size)
                    r.update(contender=name, memory_mb=quota.memory_mb, vcpus=quota.vcpus, run=run,
                             mib=mib, size=size, mib_s=size / MIB / r["wall"])
                    log(f"lambda {quota.memory_mb} MB run {run + 1}/{LAMBDA_RUNS} {name}: "
                        f"{r['wall']:.1f} s, {r['cpu']:.2f} s CPU")
                    results.append(r)
    finally:
        for quota in quotas:
            quota.close()
    return {"mib": mib, "size": size, "runs": results}


def bench_tuning(files, s3, source_port):
    if TUNE == "skip":
        return []
    env = aws_env(s3.endpoint)
    size = files[TUNE_SIZE]["size"]
    url = f"http://127.0.0.1:{source_port}/export_{TUNE_SIZE}mib.csv.gz"
    results = []
    for run in range(TUNE_RUNS):
        for combo in TUNE.split(","):
            part, flight = (int(x) for x in combo.split("x"))
            key = f"tune/{combo}/{run}/export.csv.gz"
            cmd = contenders(url, size, key, s3.endpoint, part, flight)["export-relay"]
            r = time_v(cmd, env)
            s3.check_and_delete(key, size)
            r.update(part_mib=part, in_flight=flight, run=run, mib_s=size / MIB / r["wall"])
            log(f"tune {part} MiB x {flight} run {run + 1}: {r['mib_s']:.0f} MiB/s, "
                f"{r['rss_kib'] / 1024:.1f} MiB RSS")
            results.append(r)
    return results


def bench_s3_alone(files, s3):
    """The S3 server's own ceiling: one boto3 multipart upload of the 256 MiB file from the page
    cache, with boto3's defaults, so a reader can tell whether the server is the bottleneck."""
    mib = TUNE_SIZE if TUNE_SIZE in files else SIZES[0]
    path = DATA / f"export_{mib}mib.csv.gz"
    env = aws_env(s3.endpoint)
    code = ("import boto3,os,sys; boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL'])"
            ".upload_file(sys.argv[1], 'bench', 'alone/x')")
    out = []
    for _ in range(RUNS):
        r = time_v([PY, "-c", code, str(path)], env)
        s3.check_and_delete("alone/x", files[mib]["size"])
        r.update(mib=mib, mib_s=files[mib]["size"] / MIB / r["wall"])
        out.append(r)
    return out


# ---------------------------------------------------------------- poll


def start_moto():
    """moto's server (S3 and SQS) on a free port: the process and its endpoint."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto_log = open(TARGET / "bench-moto.log", "w")
    moto = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=moto_log, stderr=subprocess.STDOUT)
    wait_http(f"{endpoint}/moto-api/", moto)
    return moto, endpoint


def bench_poll():
    import boto3

    moto, endpoint = start_moto()
    sim = subprocess.Popen([str(EXAMPLES / "bench_sim"), "10"], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(sim.stdout.readline())
        env = aws_env(endpoint)
        sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="bench")
        env.update(SIM_API_URL=info["api_url"], SIM_API_KEY=info["api_key"],
                   DEALMACHINE_API_URL=info["api_url"], DEALMACHINE_API_KEY=info["api_key"])
        results = []
        for records in (1, 10):
            env["EXPORT_IDS"] = ",".join(info["ids"][:records])
            for name, cmd in {
                "export-relay": [str(EXAMPLES / "bench_poll"), str(POLL_BATCHES)],
                "python boto3 (sequential)": [PY, str(ROOT / "bench" / "py_handler.py"), "poll",
                                              str(POLL_BATCHES)],
            }.items():
                # A fresh queue for each, so no contender sends into a fuller queue.
                env["QUEUE_URL"] = sqs.create_queue(QueueName=f"bench-{len(results)}")["QueueUrl"]
                r = time_v(cmd, env)
                out = json.loads(r.pop("stdout").strip().splitlines()[-1])
                out.update(contender=name, rss_kib=r["rss_kib"])
                med = statistics.median(out["batch_seconds"])
                log(f"poll {name} {records} record(s): median batch {med * 1000:.1f} ms, "
                    f"CPU {out['cpu_seconds'] / (POLL_BATCHES * records) * 1000:.2f} ms/message")
                results.append(out)
        return results
    finally:
        sim.stdin.close()
        sim.wait(10)
        stop(moto)


def bench_poll_timing():
    """The polling table: exports of several durations relayed as moto's SQS delivers the relay's
    own delayed messages, on the doubling schedule and the progress-aware one, and batches of
    due polls (examples/bench_poll_timing.rs). Real delays: it takes as long as the longest run."""
    moto, endpoint = start_moto()
    try:
        env = aws_env(endpoint)
        env.update(BENCH_POLL_RUNS=POLL_RUNS, BENCH_POLL_REPEATS=POLL_REPEATS)
        log(f"poll timing: runs {POLL_RUNS} s, {POLL_REPEATS} of each; this takes as long as the "
            "longest run, and a bit")
        p = subprocess.run([str(EXAMPLES / "bench_poll_timing")], env=env, capture_output=True,
                           text=True)
        if p.returncode != 0:
            raise RuntimeError(f"bench_poll_timing failed ({p.returncode}): {p.stderr[-2000:]}")
        out = json.loads(p.stdout.strip().splitlines()[-1])
        out["build"] = EXAMPLES.parent.name
        out["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        log(f"poll timing: {len(out['exports'])} exports in {out['seconds']:.0f} s")
        return out
    finally:
        stop(moto)


# ---------------------------------------------------------------- init


class RuntimeApi:
    """A tiny Lambda Runtime API: notes when the first `GET .../invocation/next` arrives, and
    never answers it (the process is then stopped)."""

    def __init__(self):
        self.first_next = None
        self.arrived = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.endswith("/2018-06-01/runtime/invocation/next"):
                    if not outer.arrived.is_set():
                        outer.first_next = time.perf_counter()
                        outer.arrived.set()
                    time.sleep(30)
                else:
                    self.send_error(404)

            def do_POST(self):
                # Lambda's Extensions API, as the function's graceful-shutdown hook registers
                # a no-op extension at init, as it does in AWS.
                if self.path.endswith("/2020-01-01/extension/register"):
                    self.rfile.read(int(self.headers.get("Content-Length", 0)))
                    body = b'{"functionName": "bench", "functionVersion": "1", "handler": "bootstrap"}'
                    self.send_response(200)
                    self.send_header("Lambda-Extension-Identifier", "bench-extension")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def measure(self, cmd, env):
        self.first_next, _ = None, self.arrived.clear()
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            if not self.arrived.wait(30):
                raise RuntimeError(f"{cmd[0]} never asked for an invocation: "
                                   f"{proc.stderr.read(2000) if proc.poll() is not None else ''}")
            return self.first_next - started
        finally:
            proc.kill()
            proc.wait()


def bench_init():
    api = RuntimeApi()
    env = aws_env("http://127.0.0.1:9")  # never called during init
    env.update(
        AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{api.port}", AWS_LAMBDA_FUNCTION_NAME="bench",
        AWS_LAMBDA_FUNCTION_VERSION="1", AWS_LAMBDA_FUNCTION_MEMORY_SIZE="512",
        DEALMACHINE_API_KEY="dm_sk_live_bench", DEALMACHINE_API_URL="http://127.0.0.1:9/v1",
        DESTINATION_BUCKET="bench", QUEUE_URL="http://127.0.0.1:9/123456789012/bench",
        DOWNLOAD_HOSTS="127.0.0.1", ALLOW_INSECURE_HTTP="true", S3_FORCE_PATH_STYLE="true",
    )
    results = {}
    for name, cmd in {
        "export-relay (bootstrap)": [str(BOOTSTRAP)],
        "python boto3 handler": [PY, str(ROOT / "bench" / "py_handler.py")],
    }.items():
        api.measure(cmd, env)  # a first run to warm the page cache
        runs = [api.measure(cmd, env) for _ in range(INIT_RUNS)]
        log(f"init {name}: median {statistics.median(runs) * 1000:.1f} ms")
        results[name] = runs
    api.server.shutdown()
    return results


# ---------------------------------------------------------------- size


def sizes():
    out = {}
    # `make bench` builds into the target dir; a separate one (target/arm) is looked at too.
    lambda_dirs = [TARGET / "lambda" / "bootstrap", TARGET / "arm" / "lambda" / "bootstrap"]
    lambda_dir = max((d for d in lambda_dirs if (d / "bootstrap.zip").exists()),
                     key=lambda d: (d / "bootstrap.zip").stat().st_mtime, default=lambda_dirs[0])
    zip_path = lambda_dir / "bootstrap.zip"
    if zip_path.exists():
        out["arm64_zip_bytes"] = zip_path.stat().st_size
        out["arm64_zip_mtime"] = time.ctime(zip_path.stat().st_mtime)
    arm_bin = lambda_dir / "bootstrap"
    if arm_bin.exists():
        out["arm64_binary_bytes"] = arm_bin.stat().st_size
    if BOOTSTRAP.exists():
        out["x86_64_binary_bytes"] = BOOTSTRAP.stat().st_size
    return out


def main():
    results = {"machine": machine(), "config": {
        "sizes_mib": SIZES, "runs": RUNS, "tuning": TUNE, "tune_size_mib": TUNE_SIZE,
        "poll_batches": POLL_BATCHES, "init_runs": INIT_RUNS, "profile": PROFILE,
        "lambda_mb": LAMBDA_MB, "lambda_size_mib": LAMBDA_SIZE, "lambda_runs": LAMBDA_RUNS}}
    started = time.time()
    files = gen_files()
    results["files"] = {str(k): v for k, v in files.items()}
    source_log = open(TARGET / "bench-serve.log", "w")
    source = subprocess.Popen([str(EXAMPLES / "bench_serve"), str(DATA)], stdout=subprocess.PIPE,
                              stderr=source_log, text=True)
    source_port = int(source.stdout.readline())
    s3 = S3()
    try:
        if "copy" in SECTIONS:
            results["copy"] = bench_copy(files, s3, source_port)
            results["s3_alone"] = bench_s3_alone(files, s3)
        if "where" in SECTIONS:
            results["where"] = bench_where(files, s3, source_port)
        if "lambda" in SECTIONS:
            results["lambda"] = bench_lambda(files, s3, source_port)
        if "tuning" in SECTIONS:
            results["tuning"] = bench_tuning(files, s3, source_port)
    finally:
        s3.close()
        stop(source)
        shutil.rmtree(S3ROOT, ignore_errors=True)
    if "poll" in SECTIONS:
        results["poll"] = bench_poll()
    if "poll-timing" in SECTIONS:
        results["poll_timing"] = bench_poll_timing()
    if "init" in SECTIONS:
        results["init"] = bench_init()
    results["sizes"] = sizes()
    results["seconds"] = time.time() - started
    timed = results.get("where", {}).get("copies", []) + results.get("lambda", {}).get("runs", [])
    for r in results.get("copy", []) + results.get("tuning", []) + results.get("s3_alone", []) + timed:
        r.pop("stdout", None)
    out = ROOT / "bench" / "results.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {out} after {results['seconds']:.0f} s")


# The parts that can be measured again alone: --only NAME, and their keys in results.json.
PARTS = {"poll-timing": ("poll_timing", bench_poll_timing), "init": ("init", bench_init),
         "sizes": ("sizes", sizes)}


def only(name):
    """Measures one part again, keeping the rest of results.json."""
    if name not in PARTS:
        sys.exit(f"bench/run.py: --only takes one of {', '.join(PARTS)}, not {name!r}")
    key, measure = PARTS[name]
    out = ROOT / "bench" / "results.json"
    results = json.loads(out.read_text())
    results[key] = measure()
    out.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {key} into {out}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--only":
        only(args[1])
    elif args in (["--init-only"], ["--sizes-only"]):  # the older spellings
        only(args[0][2:-5])
    elif not args:
        main()
    else:
        sys.exit("usage: bench/run.py [--only poll-timing|init|sizes]")
