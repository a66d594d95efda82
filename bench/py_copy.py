"""Contender 3 of the copy benchmark: what a Python Lambda would do with requests and boto3.

    py_copy.py URL BUCKET KEY

Streams the HTTP response (`r.raw`, the bytes as served) into `upload_fileobj`, boto3's managed
multipart upload with its default TransferConfig (8 MiB parts, 10 threads). The endpoint and
credentials come from the AWS_* environment variables.
"""

import os
import sys

import boto3
import requests


def main() -> None:
    url, bucket, key = sys.argv[1:4]
    s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    with requests.get(url, stream=True, timeout=60) as r:
        r.raise_for_status()
        s3.upload_fileobj(r.raw, bucket, key, ExtraArgs={"ContentType": "application/gzip"})


if __name__ == "__main__":
    main()
