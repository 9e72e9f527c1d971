"""Deletes the S3 buckets earlier test runs left in the local SeaweedFS (names
`t-`, `d-` or `e-` plus 32 hex digits, as the tests make them), so runs do not pile up
until SeaweedFS has no free volumes left. Other buckets (a demo's) are left alone.
Runs under the tools venv's python (boto3), with .data/services.env loaded."""

import os
import re
import sys

import boto3

TEST_BUCKET = re.compile(r"^[tde]-[0-9a-f]{32}$")

s3 = boto3.client(
    "s3",
    endpoint_url=os.environ["PORTSHIFT_TEST_S3_ENDPOINT"],
    region_name="us-east-1",
    aws_access_key_id=os.environ["PORTSHIFT_TEST_S3_ACCESS_KEY"],
    aws_secret_access_key=os.environ["PORTSHIFT_TEST_S3_SECRET_KEY"],
)
removed = 0
for bucket in s3.list_buckets().get("Buckets", []):
    name = bucket["Name"]
    if not TEST_BUCKET.match(name):
        continue
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
    uploads = s3.list_multipart_uploads(Bucket=name).get("Uploads", [])
    for u in uploads:
        s3.abort_multipart_upload(Bucket=name, Key=u["Key"], UploadId=u["UploadId"])
    s3.delete_bucket(Bucket=name)
    removed += 1
print(f"removed {removed} test bucket(s) of earlier runs", file=sys.stderr)
