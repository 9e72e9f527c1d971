"""Test helper: sets up and reads back Azure Blob and GCS test servers with the
providers' own Python SDKs (azure-storage-blob, google-cloud-storage), so what
portshift wrote is checked by a client that shares none of its code.

Run with the project venv's python (PORTSHIFT_TEST_PYTHON). Subcommands:
  azure-container ENDPOINT ACCOUNT KEY CONTAINER PERMS  create the container, print a SAS
                                                        token granting exactly PERMS
  azure-sas ENDPOINT ACCOUNT KEY CONTAINER PERMS        print a SAS token only
  azure-download ENDPOINT ACCOUNT KEY CONTAINER PREFIX DIR
  gcs-bucket ENDPOINT BUCKET                            create the bucket
  gcs-download ENDPOINT BUCKET PREFIX DIR
Downloads write every object under PREFIX/ into DIR (prefix stripped) and print one
JSON object: {"objects": {relative path: {"bytes": n, "sha256": hex, "content_type": ..,
"md5": base64 or null}}, "uncommitted_blocks": n (Azure only)}.
"""

import hashlib
import json
import os
import sys
from datetime import datetime, timedelta, timezone


def azure_service(endpoint, account, key):
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient(endpoint, credential={"account_name": account, "account_key": key})


def azure_sas(account, key, container, perms):
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(
        account,
        container,
        account_key=key,
        permission=ContainerSasPermissions.from_string(perms),
        expiry=datetime.now(timezone.utc) + timedelta(hours=2),
    )


def write(dir_, rel, data):
    path = os.path.join(dir_, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def main(argv):
    cmd = argv[1]
    if cmd == "azure-container":
        endpoint, account, key, container, perms = argv[2:7]
        azure_service(endpoint, account, key).create_container(container)
        print(azure_sas(account, key, container, perms))
    elif cmd == "azure-sas":
        endpoint, account, key, container, perms = argv[2:7]
        print(azure_sas(account, key, container, perms))
    elif cmd == "azure-download":
        endpoint, account, key, container, prefix, dir_ = argv[2:8]
        cc = azure_service(endpoint, account, key).get_container_client(container)
        out = {}
        uncommitted = 0
        for blob in cc.list_blobs(name_starts_with=prefix + "/"):
            rel = blob.name[len(prefix) + 1 :]
            bc = cc.get_blob_client(blob.name)
            data = bc.download_blob(max_concurrency=4).readall()
            props = bc.get_blob_properties()
            md5 = props.content_settings.content_md5
            if md5 is not None:
                import base64

                md5 = base64.b64encode(bytes(md5)).decode()
                # The service checks what it stores against what it serves.
                if md5 != base64.b64encode(hashlib.md5(data).digest()).decode():
                    raise SystemExit(f"{blob.name}: stored Content-MD5 does not match the bytes")
            _, uncommitted_blocks = bc.get_block_list("all")
            uncommitted += len(uncommitted_blocks)
            out[rel] = {
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "content_type": props.content_settings.content_type,
                "md5": md5,
            }
            write(dir_, rel, data)
        print(json.dumps({"objects": out, "uncommitted_blocks": uncommitted}))
    elif cmd == "gcs-bucket":
        endpoint, bucket = argv[2:4]
        gcs_client(endpoint).create_bucket(bucket)
    elif cmd == "gcs-download":
        endpoint, bucket, prefix, dir_ = argv[2:6]
        client = gcs_client(endpoint)
        out = {}
        for blob in client.list_blobs(bucket, prefix=prefix + "/"):
            rel = blob.name[len(prefix) + 1 :]
            data = blob.download_as_bytes(checksum="md5" if blob.md5_hash else None)
            out[rel] = {
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "content_type": blob.content_type,
                "md5": blob.md5_hash,
            }
            write(dir_, rel, data)
        print(json.dumps({"objects": out}))
    else:
        raise SystemExit(f"unknown subcommand {cmd}")


def gcs_client(endpoint):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="portshift-test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )


if __name__ == "__main__":
    main(sys.argv)
