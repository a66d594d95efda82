"""The Python peer of export-relay's poll path: a Lambda handler with requests and boto3.

Init (module level, as a Lambda function does it): import boto3 and requests, create the SQS
and S3 clients and an HTTP session. The handler, for each SQS record, GETs the export from the
DealMachine API and, while it is still running, puts it back on the queue with a delay: one
GET and one SendMessage, one record after another, as a typical handler is written.

    py_handler.py                 the Runtime API loop (needs AWS_LAMBDA_RUNTIME_API)
    py_handler.py poll BATCHES    the poll benchmark, like examples/bench_poll.rs
"""

import json
import os
import sys
import time
import urllib.request

import boto3
import requests

API_URL = os.environ.get("DEALMACHINE_API_URL", "https://api.v2.dealmachine.com/v1")
API_KEY = os.environ.get("DEALMACHINE_API_KEY", "")
QUEUE_URL = os.environ.get("QUEUE_URL", "")
ENDPOINT = os.environ.get("AWS_ENDPOINT_URL")

session = requests.Session()
session.headers["Authorization"] = f"Bearer {API_KEY}"
sqs = boto3.client("sqs", endpoint_url=ENDPOINT)
s3 = boto3.client("s3", endpoint_url=ENDPOINT)


def handler(event, _context=None):
    failures = []
    for record in event["Records"]:
        try:
            body = record["body"]
            export_id = json.loads(body)["export_id"] if body.startswith("{") else body
            r = session.get(f"{API_URL}/exports/{export_id}", timeout=30)
            r.raise_for_status()
            status = r.json()["data"]["status"]
            if status in ("pending", "processing"):
                sqs.send_message(
                    QueueUrl=QUEUE_URL,
                    MessageBody=json.dumps({"export_id": export_id, "attempt": 2}),
                    DelaySeconds=30,
                )
        except Exception:  # noqa: BLE001 - a failed record is retried by SQS
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}


def runtime_loop():
    api = os.environ["AWS_LAMBDA_RUNTIME_API"]
    base = (api if api.startswith("http") else f"http://{api}") + "/2018-06-01/runtime/invocation"
    while True:
        with urllib.request.urlopen(f"{base}/next") as r:
            request_id = r.headers["Lambda-Runtime-Aws-Request-Id"]
            event = json.loads(r.read())
        result = json.dumps(handler(event)).encode()
        urllib.request.urlopen(urllib.request.Request(f"{base}/{request_id}/response", data=result))


def poll_bench(batches):
    ids = [i for i in os.environ["EXPORT_IDS"].split(",") if i]
    event = {"Records": [{"messageId": f"bench-{i}", "body": id_} for i, id_ in enumerate(ids)]}
    started = time.perf_counter()
    assert not handler(event)["batchItemFailures"], "warm-up batch failed"
    warmup = time.perf_counter() - started
    cpu_before = time.process_time()
    walls = []
    for _ in range(batches):
        started = time.perf_counter()
        assert not handler(event)["batchItemFailures"], "batch failed"
        walls.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu_before
    print(json.dumps({"records": len(ids), "warmup_seconds": warmup, "batch_seconds": walls,
                      "cpu_seconds": cpu}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["poll"]:
        poll_bench(int(sys.argv[2]))
    else:
        runtime_loop()
