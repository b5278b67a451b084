"""Getting a token from a SMART Backend Services server with client_secret_basic (the conformance
kit and other command-line callers); discovery through ``<fhir base>/.well-known/smart-configuration``."""
from __future__ import annotations

import requests


class TokenFetchError(RuntimeError):
    pass


def discover_token_url(fhir_base: str, timeout: float = 15.0) -> str:
    url = f"{fhir_base.rstrip('/')}/.well-known/smart-configuration"
    try:
        response = requests.get(url, timeout=timeout, headers={"Accept": "application/json"})
        response.raise_for_status()
        return response.json()["token_endpoint"]
    except (requests.RequestException, ValueError, KeyError) as exc:
        raise TokenFetchError(f"no token_endpoint in {url}: {exc}") from exc


def fetch_token(fhir_base: str, client_id: str, client_secret: str, token_url: str | None = None,
                scope: str | None = None, timeout: float = 15.0) -> str:
    """An access token for ``client_id``; raises TokenFetchError saying why not."""
    token_url = token_url or discover_token_url(fhir_base, timeout)
    form = {"grant_type": "client_credentials"}
    if scope:
        form["scope"] = scope
    try:
        response = requests.post(token_url, data=form, auth=(client_id, client_secret), timeout=timeout)
    except requests.RequestException as exc:
        raise TokenFetchError(f"{token_url}: {exc}") from exc
    if response.status_code != 200:
        raise TokenFetchError(f"{token_url} answered {response.status_code}: {response.text[:300]}")
    return response.json()["access_token"]
