"""A real OpenID provider (panva/oidc-provider on node, ``oidc_provider/server.js``) for the sign-in tests, on a
free port of 127.0.0.1 for the whole session; its packages are installed once (``npm ci``) when missing.

Its people are in a JSON file the test rewrites (``set_account``, ``remove_account``): the provider reads it at
every login, token and userinfo request. Clients are registered at run time (``client_for``: dynamic client
registration), so the live server's port can be in their redirect URIs. ``sign_in`` plays the person on the
provider's own login form, with a fresh cookie jar each time (so the provider always asks for the password).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from tests.support import process_stop

FOLDER = Path(__file__).resolve().parent / "oidc_provider"
NODE = shutil.which("node")
NPM = shutil.which("npm")

#: the provider's people at the start of each test: username -> sub, password, profile, groups
ACCOUNTS: dict[str, dict[str, Any]] = {
    "alice": {
        "sub": "5f0c1c7e-alice",
        "password": "alice-pw-1",
        "email": "alice@example.org",
        "name": "Alice Archer",
        "given_name": "Alice",
        "family_name": "Archer",
        "groups": ["finance", "everyone"],
    },
    "bob": {
        "sub": "9a7d2b11-bob",
        "password": "bob-pw-1",
        "email": "bob@example.org",
        "name": "Bob Baker",
        "given_name": "Bob",
        "family_name": "Baker",
        "groups": ["everyone"],
    },
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TestProvider:
    """The running provider: its issuer, its people, its clients, and a person signing in on its login form."""

    __test__ = False  # not a test class

    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.accounts_file = folder / "accounts.json"
        self.log = folder / "oidc-provider.log"
        self._clients: dict[tuple[str, ...], tuple[str, str]] = {}
        self.reset()
        self._start()

    def _start(self) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [NODE or "node", "server.js"],
                cwd=FOLDER,
                env={**os.environ, "PORT": str(self.port), "ACCOUNTS_FILE": str(self.accounts_file)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the test OpenID provider did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """The provider down for the block, then started again on the same port (its clients registered anew)."""
        self.stop()
        try:
            yield
        finally:
            self._clients.clear()
            self._start()

    def stop(self) -> None:
        process_stop(self.process)

    # people
    def reset(self) -> None:
        self._write(ACCOUNTS)

    def accounts(self) -> dict[str, dict[str, Any]]:
        return dict(json.loads(self.accounts_file.read_text()))

    def _write(self, accounts: dict[str, Any]) -> None:
        temporary = self.accounts_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(accounts))
        temporary.replace(self.accounts_file)

    def set_account(self, username: str, **changes: Any) -> None:
        """Change someone (their groups, email...), or add them with ``changes`` as their entry."""
        accounts = self.accounts()
        accounts[username] = {**accounts.get(username, {}), **changes}
        self._write(accounts)

    def rename(self, old: str, new: str) -> None:
        accounts = self.accounts()
        accounts[new] = accounts.pop(old)
        self._write(accounts)

    def remove_account(self, username: str) -> None:
        accounts = self.accounts()
        del accounts[username]
        self._write(accounts)

    # clients
    def client_for(self, *redirect_uris: str) -> tuple[str, str]:
        """(client_id, client_secret) of a confidential client with these redirect URIs (registered once)."""
        if redirect_uris not in self._clients:
            response = httpx.post(
                f"{self.issuer}/reg",
                json={
                    "redirect_uris": list(redirect_uris),
                    # where the provider's sign-out sends people back: each portal's login page
                    "post_logout_redirect_uris": [
                        uri.replace("/oidc/callback/", "/accounts/login/") for uri in redirect_uris
                    ],
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "client_secret_basic",
                },
                timeout=10,
            )
            response.raise_for_status()
            registered = response.json()
            self._clients[redirect_uris] = (registered["client_id"], registered["client_secret"])
        return self._clients[redirect_uris]

    # a person at the provider
    def sign_in(
        self,
        authorize_url: str,
        username: str,
        password: str | None = None,
        *,
        cancel: bool = False,
        browser: httpx.Client | None = None,
    ) -> str:
        """Follow ``authorize_url`` to the provider's login form, fill it in (or press Cancel) and return the
        URL the provider then sends the browser to (the portal's callback, with the code or the error).
        ``browser``: a client whose cookies (the provider's session) outlive the call; a new one by default."""
        if password is None:
            password = ACCOUNTS[username]["password"] if username in ACCOUNTS else ""
        with nullcontext(browser) if browser is not None else httpx.Client(timeout=10) as browser:
            response = browser.get(authorize_url)
            url = urljoin(authorize_url, response.headers["location"])
            page = browser.get(url)
            assert page.status_code == 200, page.text
            action = "abort" if cancel else "login"
            form = re.search(rf'action="([^"]+/{action})"', page.text)
            assert form is not None, page.text
            response = browser.post(urljoin(url, form.group(1)), data={"username": username, "password": password})
            assert response.status_code in (302, 303), response.text
            location = urljoin(url, response.headers["location"])
            while location.startswith(self.issuer):
                response = browser.get(location)
                assert response.status_code in (302, 303), response.text
                location = urljoin(location, response.headers["location"])
            return location


def _install() -> None:
    # one install at a time: the test processes of a parallel run (make test) each start a provider, and `npm ci`
    # empties node_modules first, under the feet of another process's server
    with (FOLDER / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (FOLDER / "node_modules" / "oidc-provider").is_dir():
            return
        if NPM is None:
            pytest.skip("npm is not installed: the test OpenID provider (oidc-provider) cannot be installed")
        command = [NPM, "ci" if (FOLDER / "package-lock.json").exists() else "install", "--no-audit", "--no-fund"]
        done = subprocess.run(command, cwd=FOLDER, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            pytest.skip(f"npm could not install the test OpenID provider (no registry?): {done.stderr[-500:]}")


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestProvider]:
    """The test OpenID provider, started once for the session."""
    if NODE is None:
        pytest.skip("node is not installed: the OpenID sign-in tests need it for their provider (oidc-provider)")
    _install()
    provider = TestProvider(tmp_path_factory.mktemp("oidc-provider"))
    yield provider
    provider.stop()


@pytest.fixture
def provider(oidc_provider: TestProvider) -> Iterator[TestProvider]:
    """The provider with its people as at the start (``ACCOUNTS``) for this test, and after it."""
    oidc_provider.reset()
    yield oidc_provider
    oidc_provider.reset()


def oidc_settings(settings: Any, provider: TestProvider, redirect_uri: str, *, local_login: bool = True) -> None:
    """Turn OpenID sign-in on, as the environment would (``OIDC_ISSUER_URL``... and the backends it adds)."""
    client_id, client_secret = provider.client_for(redirect_uri)
    settings.OIDC_ISSUER_URL = provider.issuer
    settings.OIDC_CLIENT_ID = client_id
    settings.OIDC_CLIENT_SECRET = client_secret
    settings.OIDC_PROVIDER_NAME = "Test IdP"
    settings.OIDC_SCOPES = "openid email profile groups"
    settings.OIDC_GROUPS_CLAIM = "groups"
    settings.AUTH_LOCAL_LOGIN = local_login
    settings.AUTHENTICATION_BACKENDS = [
        "knowledge.services.directory_oidc.PortalOIDCBackend",
        "django.contrib.auth.backends.ModelBackend"
        if local_login
        else "knowledge.services.directory.PermissionsBackend",
    ]
