import psycopg
import pytest

from hub.store import Store, classify, refused_login
from shared.errors import PermanentStoreError, TransientStoreError

SERVER = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: '


@pytest.mark.parametrize(("fatal", "state"), [
    ('FATAL:  role "nobody" does not exist', "28000"),
    ('FATAL:  password authentication failed for user "fleet"', "28P01"),
    ('FATAL:  no pg_hba.conf entry for host "10.0.0.2", user "fleet", database "x"', "28000"),
    ('FATAL:  database "fleeet" does not exist', "3D000"),
    ('FATAL:  permission denied for database "fleet"', "42501"),
    ("FATAL:  Tenant or user not found", "28000"),
])
def test_a_refused_login_is_permanent_and_says_why(fatal: str, state: str) -> None:
    error = classify(psycopg.OperationalError(SERVER + fatal))
    assert isinstance(error, PermanentStoreError) and error.refused
    assert error.sqlstate == state
    assert str(error) == ('connection to server at "127.0.0.1", port 5432 refused the login: '
                          + fatal.removeprefix("FATAL:  "))


@pytest.mark.parametrize("text", [
    "Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?",
    "FATAL:  the database system is starting up",
    "FATAL:  sorry, too many clients already",
])
def test_an_unreachable_or_busy_server_stays_transient(text: str) -> None:
    error = classify(psycopg.OperationalError(SERVER + text))
    assert isinstance(error, TransientStoreError) and not error.refused
    assert refused_login(text) is None


def test_a_store_error_keeps_psycopgs_error_as_its_cause() -> None:
    store = Store("postgresql://fleet@127.0.0.1:1/fleet")  # nothing listens on port 1
    with pytest.raises(TransientStoreError) as raised:
        store.check()
    assert isinstance(raised.value.__cause__, psycopg.OperationalError)
