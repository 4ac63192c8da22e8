from __future__ import annotations

import pytest

from mailer.accounts.roles import Permission, can, require
from mailer.accounts.service import (
    authenticate,
    create_account,
    create_api_key,
    create_user,
    revoke_api_key,
    verify_api_key,
)
from mailer.core.config import Settings
from mailer.core.errors import AuthenticationFailed, Conflict, PermissionDenied, ValidationFailed
from mailer.core.types import Role
from mailer.storage.db import session_scope


def test_password_is_hashed_with_argon2_and_checked(sqlite_settings: Settings) -> None:
    with session_scope() as session:
        account = create_account(session, "Entidad")
        assert account.id
        user = create_user(session, account.id, "Ana@Example.PE", "correct horse battery", "editor")
        assert user.password_hash.startswith("$argon2id$")
        assert "correct horse" not in user.password_hash
    with session_scope() as session:
        assert authenticate(session, "ana@example.pe", "correct horse battery").role == "editor"
        with pytest.raises(AuthenticationFailed):
            authenticate(session, "ana@example.pe", "wrong password!")
        with pytest.raises(AuthenticationFailed):
            authenticate(session, "nobody@example.pe", "correct horse battery")


def test_user_input_is_validated(sqlite_settings: Settings) -> None:
    with session_scope() as session:
        account = create_account(session, "Entidad")
        assert account.id
        with pytest.raises(ValidationFailed, match="at least 10"):
            create_user(session, account.id, "a@example.pe", "short", "admin")
        with pytest.raises(ValidationFailed, match="not a valid e-mail"):
            create_user(session, account.id, "not-an-address", "long enough pw", "admin")
        with pytest.raises(PermissionDenied, match="unknown role"):
            create_user(session, account.id, "a@example.pe", "long enough pw", "root")
        create_user(session, account.id, "a@example.pe", "long enough pw", "admin")
        with pytest.raises(Conflict):
            create_user(session, account.id, "A@example.pe", "long enough pw", "admin")


def test_api_keys_are_stored_hashed_named_and_revocable(sqlite_settings: Settings) -> None:
    with session_scope() as session:
        account = create_account(session, "Entidad")
        assert account.id
        key, plaintext = create_api_key(session, account.id, "ERP Compras", "manager")
        assert plaintext.startswith("mk_") and plaintext not in key.key_hash
        key_id = key.id
        account_id = account.id
    with session_scope() as session:
        principal = verify_api_key(session, plaintext)
        assert principal.account_id == account_id and principal.role == "manager"
        assert "ERP Compras" in principal.actor
        with pytest.raises(AuthenticationFailed):
            verify_api_key(session, plaintext + "x")
        with pytest.raises(AuthenticationFailed, match="malformed"):
            verify_api_key(session, "Bearer something")
        assert key_id
        revoke_api_key(session, account_id, key_id)
    with session_scope() as session, pytest.raises(AuthenticationFailed, match="revoked"):
        verify_api_key(session, plaintext)


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        (Role.ADMIN, set(Permission)),
        (Role.MANAGER, {Permission.READ, Permission.EDIT, Permission.SEND}),
        (Role.EDITOR, {Permission.READ, Permission.EDIT}),
        (Role.VIEWER, {Permission.READ}),
    ],
)
def test_role_matrix(role: Role, allowed: set[Permission]) -> None:
    for permission in Permission:
        assert can(role, permission) is (permission in allowed)
        if permission not in allowed:
            with pytest.raises(PermissionDenied):
                require(role, permission)
