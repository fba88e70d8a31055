"""The MinIO policies of deploy/minio/ on an S3/IAM server that enforces them.

The compose deployment keeps the lake in the bucket ``pseudozone`` under the prefix
``lake``: ``s3://pseudozone/lake/<path under the data root>``.  The analyst key may list
and read the event zone and nothing else; the pipeline's service key may read and write
everything under ``lake/``.  MinIO takes AWS IAM policy JSON, so the very documents of
deploy/minio/ are attached here, as managed policies, to IAM users of moto's server
(tests/s3_server.py: a real process on loopback, IAM enforced after an admin user is
made; the users' keys are made at run time).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from pseudozone.config import Settings
from pseudozone.lake import layout
from tests.s3_server import Credentials, MotoServer, client, evaluate, run_moto_server, s3_request_context

POLICIES = Path(__file__).resolve().parents[2] / "deploy" / "minio"
BUCKET = "pseudozone"
PREFIX = "lake"

# data root folder -> object prefix: s3://pseudozone/lake/<the same path>
_SETTINGS = Settings(root=Path("/lake-root"))


def _key(path: Path) -> str:
    return f"{PREFIX}/{path.relative_to(_SETTINGS.root).as_posix()}"


def _zone_prefix(path: Path) -> str:
    return _key(path) + "/"


EVENTS = _zone_prefix(_SETTINGS.event_zone)

# one synthetic object per place of the layout; "events" is the only one analysts may read
OBJECTS = {
    "events": _key(layout.event_file(layout.EVENTS, "web", "t1", "2024-05-01", "b1").path(_SETTINGS.zones)),
    "events-bucketed": _key(layout.event_file(layout.EVENTS, "web", "t1", "2024-05-02", "b2", bucket=7)
                            .path(_SETTINGS.zones)),
    "restricted": _key(layout.event_file(layout.RESTRICTED, "web", "t1", "2024-05-01", "b1")
                       .path(_SETTINGS.zones)),
    "pii": _key(layout.pii_file("web", "t1", "b1").path(_SETTINGS.zones)),
    "quarantine": _key(layout.quarantine_dir(_SETTINGS, "web", "t1") / "b3.csv"),
    "quarantine-rights": _key(layout.rights_quarantine_file(_SETTINGS, "t1", "g1")),
    "quarantine-requests": _key(layout.request_quarantine_file(_SETTINGS, "r1")),
    "exports": _key(layout.export_file(_SETTINGS, "t1", "r1")),
    "staging": _key(_SETTINGS.staging / "b4" / "part.parquet"),
    "index": _key(layout.index_file(_SETTINGS, "web", "t1", "b1")),
    "state": _key(_SETTINGS.state_db),
    "landing": _key(_SETTINGS.landing / "web" / "b5.csv"),
    # a sibling whose name only starts like the event zone's (a grant on "events*" would open it)
    "events-lookalike": f"{EVENTS.rstrip('/')}.old/web/b0.parquet",
}
READABLE = {"events", "events-bucketed"}
PRIVATE = sorted(set(OBJECTS) - READABLE)
# list prefixes an analyst must not use: each private place, and the parents of the event zone
PRIVATE_LIST_PREFIXES = sorted({o.rsplit("/", 1)[0] + "/" for name, o in OBJECTS.items() if name in PRIVATE}
                               | {f"{PREFIX}/{_SETTINGS.zones.name}/", f"{PREFIX}/", "",
                                  EVENTS.rstrip("/")})


def _body(name: str) -> bytes:
    return f"synthetic test object: {name}\n".encode()


def _code(call: Callable[[], Any]) -> str:
    try:
        call()
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return "allowed"


def _denied(call: Callable[[], Any]) -> bool:
    return _code(call) in ("AccessDenied", "403")


@dataclass(frozen=True)
class Lake:
    server: MotoServer
    admin: Any
    analyst: Any
    service: Any

    def user(self, name: str, policy: dict[str, Any]) -> Any:
        """An S3 client of a new IAM user holding ``policy`` (as ``mc admin policy attach`` does)."""
        return client("s3", self.server.endpoint_url, _user(self.server, name, policy))


def _policy(name: str) -> dict[str, Any]:
    return json.loads((POLICIES / f"{name}.json").read_text())


def _user(server: MotoServer, name: str, policy: dict[str, Any]) -> Credentials:
    iam = client("iam", server.endpoint_url, server.admin)
    arn = iam.create_policy(PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))["Policy"]["Arn"]
    iam.create_user(UserName=name)
    iam.attach_user_policy(UserName=name, PolicyArn=arn)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return Credentials(key["AccessKeyId"], key["SecretAccessKey"])


@pytest.fixture(scope="module")
def lake(s3_iam_server: MotoServer) -> Lake:
    admin = client("s3", s3_iam_server.endpoint_url, s3_iam_server.admin)
    admin.create_bucket(Bucket=BUCKET)
    for name, key in OBJECTS.items():
        admin.put_object(Bucket=BUCKET, Key=key, Body=_body(name))
    admin.put_object(Bucket=BUCKET, Key="outside/the-lake.txt", Body=b"not pseudozone's\n")
    analyst = client("s3", s3_iam_server.endpoint_url,
                     _user(s3_iam_server, "analyst", _policy("analyst-readonly")))
    service = client("s3", s3_iam_server.endpoint_url,
                     _user(s3_iam_server, "pseudozone", _policy("pseudozone-service")))
    return Lake(s3_iam_server, admin, analyst, service)


def _all_objects(s3: Any) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=BUCKET)
    return {o["Key"]: s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
            for o in listed.get("Contents", [])}


# -- the documents ----------------------------------------------------------------------------


def test_policies_name_the_layouts_event_zone_only() -> None:
    analyst = _policy("analyst-readonly")
    grants = {(a, r) for s in analyst["Statement"] for a in s["Action"] for r in s["Resource"]}
    assert all(s["Effect"] == "Allow" for s in analyst["Statement"])
    assert grants == {("s3:ListBucket", f"arn:aws:s3:::{BUCKET}"),
                      ("s3:GetObject", f"arn:aws:s3:::{BUCKET}/{EVENTS}*")}
    (listing,) = [s for s in analyst["Statement"] if s["Action"] == ["s3:ListBucket"]]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{EVENTS}*"]}}
    service = _policy("pseudozone-service")
    resources = {r for s in service["Statement"] for r in s["Resource"]}
    assert resources == {f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/{PREFIX}/*"}


# -- the condition evaluation the server process adds to moto (tests/s3_server.py) -----------

_LIST = "s3:ListBucket"
_BUCKET_ARN = f"arn:aws:s3:::{BUCKET}"


def _allow(condition: dict[str, Any] | None = None, effect: str = "Allow") -> dict[str, Any]:
    statement: dict[str, Any] = {"Effect": effect, "Action": "s3:List*", "Resource": _BUCKET_ARN}
    if condition is not None:
        statement["Condition"] = condition
    return {"Statement": [statement]}


@pytest.mark.parametrize(("documents", "context", "allowed"), [
    ([_allow({"StringLike": {"s3:prefix": "a/*"}})], {"s3:prefix": "a/b"}, True),
    ([_allow({"StringLike": {"s3:prefix": "a/*"}})], {"s3:prefix": "ab"}, False),
    ([_allow({"StringLike": {"s3:prefix": "a/*"}})], {}, False),  # a missing key matches nothing
    ([_allow({"StringLikeIfExists": {"s3:prefix": "a/*"}})], {}, True),
    ([_allow({"StringNotLike": {"s3:prefix": "a/*"}})], {}, True),
    ([_allow({"StringEquals": {"s3:prefix": ["", "a/"]}})], {"s3:prefix": ""}, True),
    ([_allow({"StringEquals": {"s3:prefix": "a/"}})], {"s3:prefix": "a/b"}, False),
    ([_allow({"Null": {"s3:prefix": "true"}})], {}, True),
    ([_allow({"Null": {"s3:prefix": "true"}})], {"s3:prefix": "a/"}, False),
    # two Allow statements: the one whose condition fails does not deny
    ([_allow({"StringLike": {"s3:prefix": "x/*"}}), _allow({"StringLike": {"s3:prefix": "a/*"}})],
     {"s3:prefix": "a/b"}, True),
    ([_allow(), _allow({"StringLike": {"s3:prefix": "a/*"}}, effect="Deny")], {"s3:prefix": "a/b"}, False),
    ([_allow(), _allow({"StringLike": {"s3:prefix": "a/*"}}, effect="Deny")], {"s3:prefix": "b/"}, True),
    # what is not evaluated fails closed
    ([_allow({"DateGreaterThan": {"aws:CurrentTime": "2000-01-01T00:00:00Z"}})], {}, False),
    ([_allow({"StringLike": {"s3:prefix": "${aws:username}/*"}})], {"s3:prefix": "a/"}, False),
    ([_allow(), _allow({"ForAnyValue:StringLike": {"s3:prefix": "a/*"}}, effect="Deny")], {}, False),
    ([], {}, False),
])
def test_condition_evaluation(documents: list[dict[str, Any]], context: dict[str, str],
                              allowed: bool) -> None:
    assert evaluate(documents, _LIST, _BUCKET_ARN, context) is allowed


def test_list_requests_carry_their_condition_keys() -> None:
    path = f"/{BUCKET}?list-type=2&prefix=lake%2Fzones%2Fevents%2F&delimiter=%2F&max-keys=5"
    assert s3_request_context("s3:ListBucket", path) == {
        "s3:prefix": "lake/zones/events/", "s3:delimiter": "/", "s3:max-keys": "5"}
    assert s3_request_context("s3:ListBucket", f"/{BUCKET}?prefix=") == {"s3:prefix": ""}
    assert s3_request_context("s3:ListBucket", f"/{BUCKET}") == {}
    assert s3_request_context("s3:GetObject", f"/{BUCKET}/k?prefix=x") == {}


# -- the server enforces -----------------------------------------------------------------------


def test_server_refuses_unknown_keys(lake: Lake) -> None:
    stranger = client("s3", lake.server.endpoint_url, Credentials("AKIANOTAREALKEY00000", "x" * 40))
    assert _code(lambda: stranger.get_object(Bucket=BUCKET, Key=OBJECTS["events"])) == "InvalidAccessKeyId"


def test_a_policy_granting_the_whole_lake_would_open_the_pii_zone(lake: Lake) -> None:
    """The control: the same server lets a too-wide grant through, so the analyst's denials
    below come from analyst-readonly.json and not from a server that denies everything."""
    wide = json.loads(json.dumps(_policy("analyst-readonly")).replace(EVENTS, f"{PREFIX}/"))
    s3 = lake.user("too-wide-analyst", wide)
    assert s3.get_object(Bucket=BUCKET, Key=OBJECTS["pii"])["Body"].read() == _body("pii")
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/zones/pii/")["KeyCount"] == 1
    # and a grant on "events*" (no trailing slash) would open the look-alike sibling
    loose = json.loads(json.dumps(_policy("analyst-readonly")).replace(EVENTS, EVENTS.rstrip("/")))
    s3 = lake.user("loose-analyst", loose)
    assert s3.get_object(Bucket=BUCKET, Key=OBJECTS["events-lookalike"])["Body"].read()


# -- the analyst ------------------------------------------------------------------------------


def test_analyst_lists_and_reads_the_event_zone(lake: Lake) -> None:
    listed = lake.analyst.list_objects_v2(Bucket=BUCKET, Prefix=EVENTS)
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted(OBJECTS[n] for n in READABLE)
    deeper = lake.analyst.list_objects_v2(Bucket=BUCKET, Prefix=EVENTS + "web/", Delimiter="/")
    assert [p["Prefix"] for p in deeper["CommonPrefixes"]] == [EVENTS + "web/tenant_id=t1/"]
    assert lake.analyst.list_objects(Bucket=BUCKET, Prefix=EVENTS)["Contents"]  # ListObjects v1 too
    for name in READABLE:
        body = lake.analyst.get_object(Bucket=BUCKET, Key=OBJECTS[name])["Body"].read()
        assert body == _body(name)
        assert lake.analyst.head_object(Bucket=BUCKET, Key=OBJECTS[name])["ContentLength"] == len(body)


@pytest.mark.parametrize("name", PRIVATE)
def test_analyst_cannot_read_other_zones(lake: Lake, name: str) -> None:
    key = OBJECTS[name]
    assert _code(lambda: lake.analyst.get_object(Bucket=BUCKET, Key=key)) == "AccessDenied"
    assert _denied(lambda: lake.analyst.head_object(Bucket=BUCKET, Key=key))
    # the admin reads it: the object is there, the denial is the analyst's
    assert lake.admin.get_object(Bucket=BUCKET, Key=key)["Body"].read() == _body(name)


@pytest.mark.parametrize("prefix", PRIVATE_LIST_PREFIXES)
def test_analyst_cannot_list_other_zones(lake: Lake, prefix: str) -> None:
    assert _code(lambda: lake.analyst.list_objects_v2(Bucket=BUCKET, Prefix=prefix)) == "AccessDenied"
    assert _code(lambda: lake.analyst.list_objects(Bucket=BUCKET, Prefix=prefix)) == "AccessDenied"
    assert lake.admin.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["KeyCount"] >= 1


def test_analyst_cannot_list_without_a_prefix_or_see_buckets(lake: Lake) -> None:
    assert _code(lambda: lake.analyst.list_objects_v2(Bucket=BUCKET)) == "AccessDenied"
    assert _code(lambda: lake.analyst.list_buckets()) == "AccessDenied"
    assert _code(lambda: lake.analyst.create_bucket(Bucket="analyst-bucket")) == "AccessDenied"


def test_analyst_cannot_write_or_delete_anywhere(lake: Lake) -> None:
    before = _all_objects(lake.admin)
    s3 = lake.analyst
    for name, key in OBJECTS.items():
        new = key.rsplit("/", 1)[0] + "/analyst-new.parquet"
        assert _code(partial(s3.put_object, Bucket=BUCKET, Key=key, Body=b"x")) == "AccessDenied", name
        assert _code(partial(s3.put_object, Bucket=BUCKET, Key=new, Body=b"x")) == "AccessDenied", name
        assert _code(partial(s3.delete_object, Bucket=BUCKET, Key=key)) == "AccessDenied", name
        assert _code(partial(s3.create_multipart_upload, Bucket=BUCKET, Key=key)) == "AccessDenied", name
    batch = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in OBJECTS.values()]})
    assert not batch.get("Deleted")
    assert {e["Code"] for e in batch["Errors"]} == {"AccessDenied"}
    assert _all_objects(lake.admin) == before


# -- the pipeline's service user ------------------------------------------------------------


def test_service_reads_and_writes_everywhere_under_the_prefix(lake: Lake) -> None:
    s3 = lake.service
    for name, key in OBJECTS.items():
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == _body(name)
        folder = key.rsplit("/", 1)[0] + "/"
        assert key in [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=folder)["Contents"]]
        new = folder + f"service-{os.getpid()}.tmp"
        s3.put_object(Bucket=BUCKET, Key=new, Body=b"written by the service")
        assert s3.get_object(Bucket=BUCKET, Key=new)["Body"].read() == b"written by the service"
        s3.delete_object(Bucket=BUCKET, Key=new)
        assert _code(partial(lake.admin.head_object, Bucket=BUCKET, Key=new)) == "404"
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/")
    assert {o["Key"] for o in listed["Contents"]} == set(OBJECTS.values())
    # large files go up in parts
    key = OBJECTS["pii"].rsplit("/", 1)[0] + "/multipart.parquet"
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    part = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=b"p" * 1024)
    assert s3.list_parts(Bucket=BUCKET, Key=key, UploadId=upload)["Parts"]
    s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload,
                                 MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"p" * 1024
    s3.delete_object(Bucket=BUCKET, Key=key)
    aborted = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=aborted)


def test_service_stays_inside_the_prefix(lake: Lake) -> None:
    s3 = lake.service
    assert _code(lambda: s3.get_object(Bucket=BUCKET, Key="outside/the-lake.txt")) == "AccessDenied"
    assert _code(lambda: s3.put_object(Bucket=BUCKET, Key="outside/new.txt", Body=b"x")) == "AccessDenied"
    assert _code(lambda: s3.list_objects_v2(Bucket=BUCKET, Prefix="outside/")) == "AccessDenied"
    assert _code(lambda: s3.list_objects_v2(Bucket=BUCKET)) == "AccessDenied"
    assert _code(lambda: s3.delete_bucket(Bucket=BUCKET)) == "AccessDenied"


# -- the server helper ------------------------------------------------------------------------


def test_server_helper_stops_its_process() -> None:
    with run_moto_server() as server:
        s3 = client("s3", server.endpoint_url)  # IAM not enforced: any key works
        s3.create_bucket(Bucket="scratch")
        s3.put_object(Bucket="scratch", Key="a", Body=b"a")
        assert s3.get_object(Bucket="scratch", Key="a")["Body"].read() == b"a"
        pid = server.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
