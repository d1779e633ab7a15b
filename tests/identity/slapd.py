"""A real OpenLDAP server (Debian's ``slapd``) for the sign-in tests: a throw-away configuration and directory in a
temporary folder, on a free port of 127.0.0.1, stopped at teardown.

The directory (``BASE``): ``ou=people`` with alice, bob and carol (password ``PASSWORDS[name]``); ``ou=groups``
with the groupOfNames ``readers`` (alice, carol), ``admins`` (bob) and ``staff-all``, whose member is the group
``admins`` (so bob is in it through a nested group); ``cn=portal,ou=services``, the service account the portal
binds with. Anonymous clients see nothing but may bind; signed-in ones read everything but passwords.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import process_stop

SLAPD = Path("/usr/sbin/slapd")
SLAPADD = Path("/usr/sbin/slapadd")
SCHEMA = Path("/etc/ldap/schema")
MODULES = Path("/usr/lib/ldap")

BASE = "dc=example,dc=org"
PEOPLE = f"ou=people,{BASE}"
GROUPS = f"ou=groups,{BASE}"
SERVICE_DN = f"cn=portal,ou=services,{BASE}"
SERVICE_PASSWORD = "service-pw-1"
ROOT_DN = f"cn=admin,{BASE}"
ROOT_PASSWORD = "root-pw-1"
PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-1", "carol": "carol-pw-1"}
NAMES = {"alice": ("Alice", "Archer"), "bob": ("Bob", "Baker"), "carol": ("Carol", "Clark")}

CONFIG = """\
include {schema}/core.schema
include {schema}/cosine.schema
include {schema}/inetorgperson.schema
modulepath {modules}
moduleload back_mdb
pidfile {folder}/slapd.pid
argsfile {folder}/slapd.args

database mdb
maxsize 16777216
suffix "{base}"
rootdn "{root_dn}"
rootpw {root_password}
directory {folder}/data
access to attrs=userPassword
  by self write
  by anonymous auth
  by * none
access to *
  by users read
  by * none
"""


def person(name: str) -> str:
    return f"uid={name},{PEOPLE}"


def group(name: str) -> str:
    return f"cn={name},{GROUPS}"


def _ldif() -> str:
    entries = [
        f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example",
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people",
        f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups",
        f"dn: ou=services,{BASE}\nobjectClass: organizationalUnit\nou: services",
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: portal\n"
        f"userPassword: {SERVICE_PASSWORD}",
    ]
    for name, password in PASSWORDS.items():
        given, surname = NAMES[name]
        entries.append(
            f"dn: {person(name)}\nobjectClass: inetOrgPerson\nuid: {name}\ncn: {given} {surname}\n"
            f"givenName: {given}\nsn: {surname}\nmail: {name}@example.org\nuserPassword: {password}"
        )
    members = {"readers": [person("alice"), person("carol")], "admins": [person("bob")], "staff-all": [group("admins")]}
    for name, dns in members.items():
        lines = "".join(f"\nmember: {dn}" for dn in dns)
        entries.append(f"dn: {group(name)}\nobjectClass: groupOfNames\ncn: {name}{lines}")
    return "\n\n".join(entries) + "\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Slapd:
    """One slapd process on a directory of its own; ``stop()`` / ``start()`` take it down and up again on the
    same port with the same data, ``ldapmodify`` changes the directory as its administrator would."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.uri = f"ldap://127.0.0.1:{self.port}"
        self.config = folder / "slapd.conf"
        self.log = folder / "slapd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        (folder / "data").mkdir(parents=True)
        self.config.write_text(
            CONFIG.format(
                schema=SCHEMA,
                modules=MODULES,
                folder=folder,
                base=BASE,
                root_dn=ROOT_DN,
                root_password=ROOT_PASSWORD,
            )
        )
        (folder / "directory.ldif").write_text(_ldif())
        subprocess.run(
            [str(SLAPADD), "-f", str(self.config), "-l", str(folder / "directory.ldif")],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            # -d 0: in the foreground (so the test owns the process), no debug output
            [str(SLAPD), "-f", str(self.config), "-h", f"{self.uri}/", "-d", "0"],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"slapd did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("slapd did not listen within 30 s")

    def stop(self) -> None:
        if self.proc is not None:
            process_stop(self.proc)
        self.proc = None

    def ldapmodify(self, ldif: str) -> None:
        """Apply an LDIF of changes (``changetype: modify`` / ``delete``) as the directory's administrator."""
        subprocess.run(
            ["ldapmodify", "-x", "-H", self.uri, "-D", ROOT_DN, "-w", ROOT_PASSWORD],
            input=ldif.encode(),
            check=True,
            capture_output=True,
            timeout=30,
        )


@pytest.fixture
def slapd(tmp_path: Path) -> Iterator[Slapd]:
    """A fresh directory for one test (the tests change it)."""
    if not SLAPD.exists():
        pytest.skip(f"{SLAPD} is missing: install the Debian packages slapd and ldap-utils (.ci/run does)")
    if shutil.which("ldapmodify") is None:
        pytest.skip("ldapmodify is missing: install the Debian package ldap-utils (.ci/run does)")
    server = Slapd(tmp_path / "slapd")
    server.start()
    yield server
    server.stop()
