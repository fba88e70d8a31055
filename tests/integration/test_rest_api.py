"""The REST door for rights requests, through FastAPI's TestClient (no Airflow)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi.testclient import TestClient

from pseudozone.config import Settings
from pseudozone.rights.api import MAX_BODY_BYTES, create_app
from pseudozone.rights.requests import get_status, list_requests, register_tenant

PLANTED_USER = "zelda.plantedpii@example.org"
PLANTED_VALUE = "Plantedweg 77b, Plantedstadt"
PLANTED = (PLANTED_USER, "plantedpii", "Plantedweg", "Plantedstadt")


@dataclass
class Api:
    """A client that remembers every response, to hunt them all for planted values."""

    client: TestClient
    token_a: str
    token_b: str
    responses: list[httpx.Response]

    def call(self, method: str, path: str, token: str | None = None, *, json: object = None,
             content: bytes | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
        response = self.client.request(method, path, headers=headers, json=json, content=content)
        self.responses.append(response)
        return response


def _assert_no_planted_value(responses: list[httpx.Response]) -> None:
    for response in responses:
        seen = (response.text + str(response.headers)).lower()
        for needle in PLANTED:
            assert needle.lower() not in seen, (response.request.method, response.request.url.path, needle)


@pytest.fixture
def api(settings: Settings, master_key_env: None) -> Iterator[Api]:
    token_a = register_tenant(settings, "acme")
    token_b = register_tenant(settings, "globex")
    with TestClient(create_app(lambda: settings)) as client:
        yield (found := Api(client, token_a, token_b, []))
    # whatever a test sent, no response may carry a planted value
    _assert_no_planted_value(found.responses)


def _erase(user: str = PLANTED_USER) -> dict[str, object]:
    return {"type": "erase", "user_id": user}


def test_given_health_then_ok_without_token(api: Api) -> None:
    response = api.call("GET", "/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(("method", "path"), [("POST", "/requests"), ("GET", "/requests"),
                                              ("GET", "/requests/00000000-0000-0000-0000-000000000000")])
def test_given_no_token_then_401_with_bearer_challenge(api: Api, method: str, path: str) -> None:
    response = api.call(method, path, json=_erase() if method == "POST" else None)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Bearer pz_acme_not-the-token", "Bearer ", "Basic YWNtZTpzZWNyZXQ=",
                                    "pz_acme_no_scheme"])
def test_given_wrong_token_then_401(api: Api, header: str) -> None:
    response = api.call("POST", "/requests", json=_erase(), headers={"Authorization": header})

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_given_unauthenticated_post_then_nothing_is_recorded(api: Api, settings: Settings) -> None:
    api.call("POST", "/requests", json={**_erase(), "tenant_id": "acme"})
    api.call("POST", "/requests", token="wrong", json={**_erase(), "tenant_id": "acme"})

    assert list_requests(settings) == []


def test_given_valid_erase_then_202_accepted_and_readable(api: Api) -> None:
    response = api.call("POST", "/requests", api.token_a, json=_erase())

    assert response.status_code == 202
    body = response.json()
    assert body["state"] == "accepted"
    assert body["tenant_id"] == "acme"
    assert body["type"] == "erase"
    assert "subject_id" not in body  # the pseudonym is not handed to the tenant
    got = api.call("GET", f"/requests/{body['request_id']}", api.token_a)
    assert got.status_code == 200
    assert got.json() == body


def test_given_body_repeating_own_tenant_then_accepted(api: Api) -> None:
    response = api.call("POST", "/requests", api.token_a, json={**_erase(), "tenant_id": "acme"})

    assert response.status_code == 202
    assert response.json()["tenant_id"] == "acme"


def test_given_valid_rectify_then_accepted_and_values_not_echoed(api: Api, settings: Settings) -> None:
    response = api.call("POST", "/requests", api.token_a,
                        json={"type": "rectify", "user_id": PLANTED_USER,
                              "fields": {"street_address": PLANTED_VALUE}})

    assert response.status_code == 202
    assert response.json()["state"] == "accepted"
    assert get_status(settings, response.json()["request_id"]).type == "rectify"


def test_given_an_objection_with_its_purpose_then_accepted_and_without_one_rejected(
        api: Api, settings: Settings) -> None:
    response = api.call("POST", "/requests", api.token_a,
                        json={"type": "object", "user_id": PLANTED_USER, "purpose": "third_party"})
    assert response.status_code == 202 and response.json()["state"] == "accepted"
    assert get_status(settings, response.json()["request_id"]).type == "object"

    missing = api.call("POST", "/requests", api.token_a, json={"type": "object", "user_id": PLANTED_USER})
    assert missing.status_code == 422 and missing.json()["reason"]["code"] == "malformed_purpose"


def test_given_body_naming_other_tenant_then_403_and_nothing_recorded(api: Api, settings: Settings) -> None:
    response = api.call("POST", "/requests", api.token_a, json={**_erase(), "tenant_id": "globex"})

    assert response.status_code == 403
    assert list_requests(settings) == []


def test_given_other_tenants_request_then_404_like_a_missing_one(api: Api) -> None:
    of_b = api.call("POST", "/requests", api.token_b, json=_erase()).json()["request_id"]

    as_a = api.call("GET", f"/requests/{of_b}", api.token_a)
    missing = api.call("GET", "/requests/00000000-0000-0000-0000-000000000000", api.token_a)

    assert as_a.status_code == missing.status_code == 404
    assert as_a.json() == missing.json() == {"detail": "no such request"}
    assert api.call("GET", f"/requests/{of_b}", api.token_b).status_code == 200


def test_given_unknown_type_then_422_rejected_and_recorded(api: Api) -> None:
    response = api.call("POST", "/requests", api.token_a, json={"type": "forget-me", "user_id": PLANTED_USER})

    assert response.status_code == 422
    body = response.json()
    assert body["state"] == "rejected"
    assert body["reason"]["code"] == "unknown_type"
    got = api.call("GET", f"/requests/{body['request_id']}", api.token_a)
    assert got.status_code == 200
    assert got.json()["state"] == "rejected"
    assert got.json()["tenant_id"] == "acme"


@pytest.mark.parametrize(("payload", "code"), [
    ({"type": "erase"}, "missing_user"),
    ({"type": "erase", "user_id": PLANTED_USER, "email": PLANTED_USER}, "malformed_request"),
    ({"type": "erase", "user_id": PLANTED_USER, "fields": {"city": PLANTED_VALUE}}, "malformed_fields"),
    ({"type": "rectify", "user_id": PLANTED_USER, "fields": {"birth_date": PLANTED_VALUE}},
     "malformed_fields"),
    ({"type": "rectify", "user_id": PLANTED_USER, "fields": {"city": 7}}, "malformed_fields"),
])
def test_given_invalid_request_then_422_reason_without_values(api: Api, payload: dict[str, object],
                                                                code: str) -> None:
    response = api.call("POST", "/requests", api.token_a, json=payload)

    assert response.status_code == 422
    assert response.json()["reason"]["code"] == code


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'"text"', b"", b"\xff\xfe", b"[" * 100_000])
def test_given_body_not_a_json_object_then_400(api: Api, settings: Settings, content: bytes) -> None:
    response = api.call("POST", "/requests", api.token_a, content=content[:MAX_BODY_BYTES],
                        headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert response.json() == {"detail": "body must be a JSON object"}
    assert list_requests(settings) == []


def test_given_oversized_body_then_413(api: Api) -> None:
    padding = "x" * MAX_BODY_BYTES
    response = api.call("POST", "/requests", api.token_a, json={**_erase(), "type": padding})

    assert response.status_code == 413


def test_given_two_tenants_then_list_shows_only_own_requests(api: Api) -> None:
    mine = {api.call("POST", "/requests", api.token_a, json=_erase(f"user-{i}")).json()["request_id"]
            for i in range(2)}
    mine.add(api.call("POST", "/requests", api.token_a, json={"type": "nope"}).json()["request_id"])
    theirs = api.call("POST", "/requests", api.token_b, json=_erase()).json()["request_id"]

    listed_a = api.call("GET", "/requests", api.token_a)
    listed_b = api.call("GET", "/requests", api.token_b)

    assert listed_a.status_code == listed_b.status_code == 200
    assert {r["request_id"] for r in listed_a.json()} == mine
    assert {r["tenant_id"] for r in listed_a.json()} == {"acme"}
    assert [r["request_id"] for r in listed_b.json()] == [theirs]


def test_given_requests_with_planted_pii_then_no_response_contains_it(api: Api) -> None:
    submitted = [
        api.call("POST", "/requests", api.token_a, json=_erase()),
        api.call("POST", "/requests", api.token_a,
                 json={"type": "rectify", "user_id": PLANTED_USER, "fields": {"city": PLANTED_VALUE}}),
        api.call("POST", "/requests", api.token_a, json={"type": "export", "user_id": PLANTED_USER,
                                                          "fields": {"city": PLANTED_VALUE}}),
        api.call("POST", "/requests", api.token_a, json={"type": 7, "user_id": PLANTED_USER}),
        api.call("POST", "/requests", api.token_a, json={**_erase(), "tenant_id": "globex"}),
        api.call("POST", "/requests", None, json=_erase()),
        api.call("POST", "/requests", api.token_a, content=b'{"user_id": "' + PLANTED_USER.encode() + b'"'),
    ]
    ids = [r.json()["request_id"] for r in submitted if "request_id" in r.json()]
    for request_id in ids:
        api.call("GET", f"/requests/{request_id}", api.token_a)
    api.call("GET", "/requests", api.token_a)

    assert [r.status_code for r in submitted] == [202, 202, 422, 422, 403, 401, 400]
    assert len(ids) == 4
    assert len(api.responses) == len(submitted) + len(ids) + 1
    _assert_no_planted_value(api.responses)


def test_given_broken_master_key_then_500_without_detail(settings: Settings,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    token = register_tenant(settings, "acme")  # audited: the audit chain is keyed, so before the key breaks
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", "too-short")
    with TestClient(create_app(lambda: settings)) as client:
        response = client.post("/requests", headers={"Authorization": f"Bearer {token}"}, json=_erase())

    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
