"""Hazard confirmations: requested by anyone, approved only by the bound voice session or a person.

Durable in PostgreSQL; each transition is one conditional ``UPDATE … WHERE state = … RETURNING``. The device
command enters the outbox in the same transaction as ``confirmed → executing``, so it is published exactly
once (the relay), never re-sent after a restart; ``executing → done | failed`` follows the device's reported
state. Transitions are announced with ``pg_notify`` inside the transaction, so listeners (voice, Home
Assistant, the panel) hear only what committed, on every hub instance.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from hub.config import HazardsSection
from hub.confirmations.pin import verify_pin
from hub.contracts import Confirmation, ConfirmationError, DeviceAction, DeviceService, Principal
from hub.errors import StoreError
from hub.metrics import Metrics
from hub.spine.txgroup import append_ctes
from hub.store import Store

log = structlog.get_logger("kitt.confirmations")

CHANNEL = "kitt_confirmations"
PIN_SCOPE = "house"
SWEEP_INTERVAL_S = 0.5
GAUGE_INTERVAL_S = 5.0
EXECUTE_TIMEOUT_S = 10.0
STATES = ("pending", "confirmed", "executing", "done", "failed", "cancelled", "expired")

_VERBS = {"turn_on": "turn on", "turn_off": "turn off", "unlock": "unlock", "lock": "lock", "open": "open",
          "close": "close", "disarm": "disarm", "arm": "arm", "set_position": "move"}

_COLUMNS = """id, state, device, action, hazard_class, level, prompt, principal_kind, site, session_id,
              requested_user, correlation_id, created_at, expires_at"""


def prompt_for(action: DeviceAction, label: str) -> str:
    verb = _VERBS.get(action.action, action.action.replace("_", " "))
    return f"Are you sure you want to {verb} the {label}?"


def _row_to_confirmation(row: asyncpg.Record | dict[str, Any]) -> Confirmation:
    a = row["action"]
    return Confirmation(
        id=row["id"], action=DeviceAction(a["device"], a["action"], a.get("params") or {}),
        hazard_class=row["hazard_class"], level=row["level"], state=row["state"], prompt=row["prompt"],
        requested_by=Principal(kind=row["principal_kind"], site=row["site"], session_id=row["session_id"],
                               user=row["requested_user"]),
        site=row["site"], session_id=row["session_id"], created_at=row["created_at"],
        expires_at=row["expires_at"], correlation_id=row["correlation_id"],
    )


def _notify_with_row(table: str) -> str:
    """SQL for a ``pg_notify`` that carries the whole row (listeners need not read it back), unless it is too
    big for a notification (8,000 bytes): then only the id, and listeners read the row."""
    return (f"pg_notify('{CHANNEL}', json_build_object('id', {table}.id, 'state', {table}.state, 'row', "
            f"CASE WHEN octet_length(row_to_json({table})::text) < 7000 THEN row_to_json({table}) END)::text)")


def _transition_sql(*, set_sql: str, where: str, actor: str, from_state: str) -> str:
    """One statement for a transition of the rows ``where`` selects: the conditional UPDATE, an audit event per
    row and a ``pg_notify`` carrying the row (delivered at commit). ``actor`` and ``from_state`` are SQL."""
    return f"""WITH u AS (UPDATE confirmations SET {set_sql} WHERE {where} RETURNING {_COLUMNS}),
                    ev AS (INSERT INTO events (actor, kind, subject, correlation_id, body)
                           SELECT {actor}, 'confirmation.' || u.state, u.device, u.id,
                                  jsonb_build_object('from', {from_state}) FROM u),
                    note AS (SELECT u.id, {_notify_with_row("u")} FROM u)
               SELECT u.* FROM u JOIN note USING (id)"""


def _approve_ctes(*, unexpired: bool) -> str:
    """An approval's two steps, pending → confirmed → executing, in one conditional UPDATE (they commit together,
    so nobody can see the row in between), as the CTEs ``approved`` … ``note2``: an audit event and a
    notification for each step, in order; the ``confirmed`` notification carries the row as it was after that
    step. $1 id, $2 actor, $3 command key."""
    expiry = " AND expires_at > now()" if unexpired else ""
    return f"""approved AS (UPDATE confirmations
                             SET state = 'executing', decided_at = now(), decided_by = $2, executed_at = now(),
                                 command_key = $3
                             WHERE id = $1 AND state = 'pending'{expiry} RETURNING {_COLUMNS}),
               steps AS (INSERT INTO events (actor, kind, subject, correlation_id, body)
                         SELECT $2, 'confirmation.' || s.state, a.device, a.id, jsonb_build_object('from', s.prior)
                         FROM approved a CROSS JOIN (VALUES (1, 'confirmed', 'pending'), (2, 'executing', 'confirmed'))
                              AS s(step, state, prior) ORDER BY s.step),
               as_confirmed AS (SELECT {_COLUMNS.replace("state,", "'confirmed'::text AS state,")} FROM approved),
               note1 AS (SELECT as_confirmed.id, {_notify_with_row("as_confirmed")} AS sent FROM as_confirmed),
               note2 AS (SELECT approved.id, {_notify_with_row("approved")} AS sent
                         FROM approved JOIN note1 USING (id))"""


# Inside the approval's transaction, after the checks on the locked row.
_APPROVE_SQL = f"WITH {_approve_ctes(unexpired=False)} SELECT approved.* FROM approved JOIN note2 USING (id)"
# The whole approval in one statement, its device command and events included (``append_ctes``, from $4),
# written only if the UPDATE matched: for a principal already checked against the row's immutable fields.
_APPROVE_AT_ONCE_SQL = f"""WITH {_approve_ctes(unexpired=True)}, {append_ctes(4, only_if="approved")}
                           SELECT approved.*, ARRAY(SELECT id FROM ob) AS written
                           FROM approved JOIN note2 USING (id)"""
# Pending confirmations whose fields are kept for that check (beyond it, approvals take the transaction path).
MAX_KNOWN_PENDING = 10_000

_SWEEP_SQL = _transition_sql(set_sql="state = 'expired', error = 'timeout'",
                             where="state = 'pending' AND expires_at <= now()", actor="'system'",
                             from_state="'pending'")


def _confirmation_from_json(data: dict[str, Any]) -> Confirmation:
    row = dict(data)
    for key in ("created_at", "expires_at"):
        if isinstance(row.get(key), str):
            row[key] = datetime.fromisoformat(row[key])
    return _row_to_confirmation(row)


class ConfirmationService:
    def __init__(
        self,
        *,
        store: Store,
        metrics: Metrics,
        hazards: HazardsSection,
        devices: Callable[[], DeviceService | None],
        transaction: Callable[[], AbstractAsyncContextManager[asyncpg.Connection]],
        dsn: str,
        appending: Callable[[], AbstractAsyncContextManager[Any]],
    ) -> None:
        """``transaction``: where an approval and its device command commit (the spine's, whose relay
        publishes the command from memory right after the commit)."""
        self._store = store
        self._command_transaction = transaction
        # ``Spine.appending``: an approval's command and events written with its one statement.
        self._appending = appending
        # Pending confirmations requested here (or warmed at start): their binding fields never change, so an
        # approval checks them without reading the row; state and expiry stay the database's to decide.
        self._known: dict[str, asyncpg.Record] = {}
        self._metrics = metrics
        self._hazards = hazards
        self._devices = devices
        self._dsn = dsn
        self._subscribers: list[Callable[[Confirmation], Any]] = []
        self._listener: asyncpg.Connection | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False
        self._gauge_at = float("-inf")

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._listen()
        for row in await self._store.fetch(
                f"SELECT {_COLUMNS} FROM confirmations WHERE state = 'pending' AND expires_at > now() LIMIT $1",
                MAX_KNOWN_PENDING):
            self._remember(row)
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="kitt[confirmations].sweeper")

    def start_reconciliation(self) -> None:
        """After a restart, settle ``executing`` rows from device state. Call once the device service runs."""
        self._spawn(self.reconcile_executing(), "kitt[confirmations].reconcile")

    async def stop(self) -> None:
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.close()

    async def _listen(self) -> None:
        try:
            self._listener = await asyncpg.connect(self._dsn)
            await self._listener.add_listener(CHANNEL, self._on_notify)
            self._listener.add_termination_listener(self._on_listener_lost)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot listen for confirmation changes: {exc}") from exc

    def _on_listener_lost(self, conn: asyncpg.Connection) -> None:
        if self._stopping:
            return
        log.warning("confirmation listener lost; reconnecting")
        self._spawn(self._relisten(), "kitt[confirmations].relisten")

    async def _relisten(self) -> None:
        while not self._stopping:
            try:
                await self._listen()
                return
            except StoreError:
                await asyncio.sleep(1)

    def _remember(self, row: asyncpg.Record) -> None:
        if len(self._known) < MAX_KNOWN_PENDING:
            self._known[row["id"]] = row

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        data = json.loads(payload)
        if data.get("state") != "pending":
            self._known.pop(data.get("id"), None)  # decided, here or by another instance
        if data.get("row") is not None:
            self._spawn(self._deliver(_confirmation_from_json(data["row"])), "kitt[confirmations].announce")
        else:
            self._spawn(self._announce(data["id"]), "kitt[confirmations].announce")

    async def _announce(self, confirmation_id: str) -> None:
        confirmation = await self.get(confirmation_id)
        if confirmation is not None:
            await self._deliver(confirmation)

    async def _deliver(self, confirmation: Confirmation) -> None:
        for callback in list(self._subscribers):
            try:
                result = callback(confirmation)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("confirmation subscriber failed", confirmation_id=confirmation.id)

    def subscribe(self, callback: Callable[[Confirmation], Any]) -> Callable[[], None]:
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- queries -------------------------------------------------------------------------------------

    async def get(self, confirmation_id: str) -> Confirmation | None:
        row = await self._store.fetchrow(f"SELECT {_COLUMNS} FROM confirmations WHERE id = $1", confirmation_id)
        return _row_to_confirmation(row) if row else None

    async def pending(self, *, site: str | None = None) -> list[Confirmation]:
        rows = await self._store.fetch(
            f"""SELECT {_COLUMNS} FROM confirmations
                WHERE state = 'pending' AND expires_at > now() AND ($1::text IS NULL OR site = $1)
                ORDER BY created_at""", site)
        return [_row_to_confirmation(r) for r in rows]

    async def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = await self._store.fetch(
            f"""SELECT {_COLUMNS}, decided_by, decided_at, executed_at, finished_at, error
                FROM confirmations ORDER BY created_at DESC LIMIT $1""", limit)
        return [dict(r) for r in rows]

    async def status(self) -> dict[str, Any]:
        rows = await self._store.fetch("SELECT state, count(*) AS n FROM confirmations GROUP BY state")
        counts = {r["state"]: r["n"] for r in rows}
        return {"pending": counts.get("pending", 0), "by_state": counts}

    # --- transitions ---------------------------------------------------------------------------------

    def _policy(self, hazard_class: str) -> tuple[str, float]:
        cls = self._hazards.classes.get(hazard_class)
        return (cls.level, cls.timeout_s) if cls else ("ack", 60.0)

    async def request(self, action: DeviceAction, *, hazard_class: str, principal: Principal,
                      correlation_id: str | None = None, conn: asyncpg.Connection | None = None) -> Confirmation:
        level, timeout_s = self._policy(hazard_class)
        devices = self._devices()
        info = devices.get(action.device) if devices is not None else None
        label = info.label if info is not None else action.device.replace("_", " ")
        prompt = prompt_for(action, label)
        cid = uuid.uuid4().hex[:16]
        args = (cid, action.device, {"device": action.device, "action": action.action, "params": action.params},
                hazard_class, level, prompt, principal.kind, principal.site, principal.session_id,
                principal.user, correlation_id, float(timeout_s))
        sql = f"""WITH c AS (
                      INSERT INTO confirmations (id, device, action, hazard_class, level, prompt, principal_kind,
                                                 site, session_id, requested_user, correlation_id, expires_at)
                      VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7, $8, $9, $10, $11,
                              now() + make_interval(secs => $12))
                      RETURNING {_COLUMNS}),
                  note AS (SELECT {_notify_with_row("c")} FROM c)
                  SELECT c.* FROM c, note"""  # the row and its announcement in one statement

        async def write(c: asyncpg.Connection) -> asyncpg.Record:
            row = await c.fetchrow(sql, *args)
            await self._store.record_event("confirmation.requested", actor=principal.label, subject=action.device,
                                           correlation_id=cid, conn=c,
                                           body={"confirmation_id": cid, "action": action.action,
                                                 "hazard_class": hazard_class, "level": level,
                                                 "request": correlation_id})
            return row

        if conn is not None:
            row = await write(conn)
        else:
            async with self._store.transaction() as c:
                row = await write(c)
        self._remember(row)  # if the caller's transaction rolls back, an approval finds no row to update
        return _row_to_confirmation(row)

    async def _security_event(self, kind: str, confirmation_id: str, principal: Principal, reason: str) -> None:
        await self._store.record_event(kind, actor=principal.label, subject=confirmation_id,
                                       correlation_id=confirmation_id, body={"reason": reason})

    def _check_binding(self, row: asyncpg.Record, principal: Principal) -> str | None:
        """Why ``principal`` may not decide ``row`` (None: it may)."""
        if principal.kind in ("agent", "job", "system"):
            return "agent_cannot_approve"
        if principal.kind == "voice":
            if row["principal_kind"] != "voice" or row["site"] != principal.site \
                    or row["session_id"] != principal.session_id:
                return "wrong_principal"
            return None
        if principal.kind == "user" and principal.user:
            return None
        return "wrong_principal"

    async def approve(self, confirmation_id: str, *, principal: Principal, pin: str | None = None) -> Confirmation:
        known = self._known.get(confirmation_id)
        if known is not None and known["level"] != "pin" and self._check_binding(known, principal) is None:
            row = await self._approve_at_once(known, principal)
            if row is not None:
                return self._approved(row)
            # Decided meanwhile, expired or gone: the transaction path below finds out which, and says so.
        refusal: ConfirmationError | None = None
        row = None
        async with self._command_transaction() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS}, expires_at <= now() AS expired FROM confirmations WHERE id = $1 FOR UPDATE",
                confirmation_id)
            refusal = await self._approval_refusal(conn, row, principal, pin)
            if refusal is None:
                assert row is not None
                row = await self._execute(conn, row, principal)
        if refusal is not None:
            if refusal.reason in ("wrong_principal", "agent_cannot_approve", "pin_wrong", "locked_out", "not_allowed"):
                await self._security_event("security.confirmation_refused", confirmation_id, principal, refusal.reason)
            raise refusal
        assert row is not None
        return self._approved(row)

    async def _approve_at_once(self, known: asyncpg.Record, principal: Principal) -> asyncpg.Record | None:
        """The approval as one statement (no transaction, no read): the conditional UPDATE, its events and
        notifications, the device command and its event, written only if the row was still pending and
        unexpired. For a principal already checked against ``known``'s binding. None: nothing was written."""
        devices = self._devices()
        if devices is None:
            return None
        cid = known["id"]
        key = f"confirm:{cid}"
        async with self._appending() as batch:
            await devices.enqueue_command(batch.conn, _row_to_confirmation(known).action, key=key,
                                          correlation_id=cid)
            return await batch.write(_APPROVE_AT_ONCE_SQL, cid, principal.label, key)

    def _approved(self, row: asyncpg.Record) -> Confirmation:
        """confirmed → executing committed, with the command in the outbox: wait for the device's state."""
        if os.environ.get("KITT_TEST_CRASH_AFTER") == "confirm_executing":
            os._exit(137)  # test hook: the crash right after confirmed → executing committed
        self._known.pop(row["id"], None)
        confirmation = _row_to_confirmation(row)
        self._spawn(self._await_result(confirmation, EXECUTE_TIMEOUT_S), f"kitt[confirmations].await:{confirmation.id}")
        return confirmation

    async def _approval_refusal(self, conn: asyncpg.Connection, row: asyncpg.Record | None, principal: Principal,
                                pin: str | None) -> ConfirmationError | None:
        """Decide inside the transaction; state changes made here (expiry, PIN failures) commit either way."""
        if row is None:
            return ConfirmationError("not_found", "no such confirmation")
        if row["state"] != "pending":
            return ConfirmationError("not_pending", f"the confirmation is {row['state']}")
        if (why := self._check_binding(row, principal)) is not None:
            return ConfirmationError(why, "this answer is not from the session or person the request is bound to")
        if row["expired"]:
            await self._transition(conn, row["id"], "pending", "expired", actor="system")
            return ConfirmationError("expired", "the confirmation has expired")
        if row["level"] == "pin":
            if principal.user == "homeassistant" and not self._hazards.allow_pin_from_homeassistant:
                return ConfirmationError("not_allowed", "PIN-level actions cannot be approved from Home Assistant")
            return await self._check_pin(conn, pin)
        return None

    async def _check_pin(self, conn: asyncpg.Connection, pin: str | None) -> ConfirmationError | None:
        if not self._hazards.pin_hash:
            return ConfirmationError("pin_required", "this action needs a PIN, and no PIN is configured")
        if not pin:
            return ConfirmationError("pin_required", "this action needs the PIN")
        locked = await conn.fetchval(
            "SELECT locked_until > now() FROM pin_attempts WHERE scope = $1 FOR UPDATE", PIN_SCOPE)
        if locked:
            return ConfirmationError("locked_out", "too many wrong PINs; try again later")
        if verify_pin(pin, self._hazards.pin_hash):
            await conn.execute("DELETE FROM pin_attempts WHERE scope = $1", PIN_SCOPE)
            return None
        failures = await conn.fetchval(
            """INSERT INTO pin_attempts (scope, failures) VALUES ($1, 1)
               ON CONFLICT (scope) DO UPDATE SET
                   failures = CASE WHEN pin_attempts.locked_until IS NOT NULL THEN 1
                                   ELSE pin_attempts.failures + 1 END,
                   locked_until = NULL, updated_at = now()
               RETURNING failures""", PIN_SCOPE)
        if failures >= self._hazards.max_pin_failures:
            await conn.execute(
                "UPDATE pin_attempts SET locked_until = now() + make_interval(secs => $2) WHERE scope = $1",
                PIN_SCOPE, float(self._hazards.lockout_s))
            return ConfirmationError("locked_out", "too many wrong PINs; locked out")
        return ConfirmationError("pin_wrong", "wrong PIN")

    async def _transition(self, conn: asyncpg.Connection, cid: str, from_state: str, to_state: str, *,
                          actor: str, extra_sql: str = "", extra_args: tuple[Any, ...] = ()) -> asyncpg.Record | None:
        """One conditional UPDATE; None when the row was not in ``from_state`` (someone else moved it).

        The same statement appends the audit event and the ``pg_notify`` (delivered at commit), so a
        transition costs one round trip.
        """
        actor_arg = 4 + len(extra_args)
        return await conn.fetchrow(  # $1 id, $2 from, $3 to, then extras, then the actor
            _transition_sql(set_sql=f"state = $3 {extra_sql}", where="id = $1 AND state = $2",
                            actor=f"${actor_arg}", from_state="$2::text"),
            cid, from_state, to_state, *extra_args, actor)

    async def _execute(self, conn: asyncpg.Connection, row: asyncpg.Record, principal: Principal) -> asyncpg.Record:
        cid = row["id"]
        key = f"confirm:{cid}"
        executing = await conn.fetchrow(_APPROVE_SQL, cid, principal.label, key)
        if executing is None:
            raise ConfirmationError("not_pending", "the confirmation was decided meanwhile")
        devices = self._devices()
        if devices is None:
            raise ConfirmationError("not_allowed", "no device service is running")
        confirmation = _row_to_confirmation(executing)
        await devices.enqueue_command(conn, confirmation.action, key=key, correlation_id=cid)
        return executing

    async def cancel(self, confirmation_id: str, *, principal: Principal) -> Confirmation:
        refusal: ConfirmationError | None = None
        async with self._store.transaction() as conn:
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM confirmations WHERE id = $1 FOR UPDATE",
                                      confirmation_id)
            if row is None:
                refusal = ConfirmationError("not_found", "no such confirmation")
            elif row["state"] != "pending":
                refusal = ConfirmationError("not_pending", f"the confirmation is {row['state']}")
            elif (why := self._check_binding(row, principal)) is not None:
                refusal = ConfirmationError(why, "not from the session or person the request is bound to")
            else:
                row = await self._transition(conn, confirmation_id, "pending", "cancelled", actor=principal.label,
                                             extra_sql=", decided_at = now(), decided_by = $4",
                                             extra_args=(principal.label,))
        if refusal is not None:
            if refusal.reason in ("wrong_principal", "agent_cannot_approve"):
                await self._security_event("security.confirmation_refused", confirmation_id, principal, refusal.reason)
            raise refusal
        assert row is not None
        return _row_to_confirmation(row)

    async def expire(self, confirmation_id: str, *, reason: str = "timeout") -> bool:
        """Expire a pending confirmation now (e.g. the voice confirm timer ran out). True if it did."""
        async with self._store.transaction() as conn:
            row = await self._transition(conn, confirmation_id, "pending", "expired", actor="system",
                                         extra_sql=", error = $4", extra_args=(reason,))
        return row is not None

    # --- execution result and recovery ---------------------------------------------------------------

    async def _await_result(self, confirmation: Confirmation, timeout: float) -> None:
        devices = self._devices()
        if devices is None:
            # No device service (its plugin failed): leave the row executing; it is never re-sent either way.
            log.error("cannot confirm a device state without the device service", confirmation_id=confirmation.id)
            return
        reached = await devices.wait_for(confirmation.action, timeout)
        await self._finish(confirmation.id, reached)

    async def _finish(self, cid: str, reached: bool) -> None:
        async with self._store.transaction() as conn:
            if reached:
                await self._transition(conn, cid, "executing", "done", actor="device",
                                       extra_sql=", finished_at = now()")
            else:
                await self._transition(conn, cid, "executing", "failed", actor="device",
                                       extra_sql=", finished_at = now(), error = $4",
                                       extra_args=("the device did not report the new state in time",))

    async def reconcile_executing(self) -> None:
        """After a restart: an executing row is never re-sent; its outcome comes from the device's state."""
        rows = await self._store.fetch(
            f"""SELECT {_COLUMNS}, extract(epoch FROM now() - executed_at) AS age
                FROM confirmations WHERE state = 'executing'""")
        for row in rows:
            confirmation = _row_to_confirmation(row)
            left = max(0.5, EXECUTE_TIMEOUT_S - float(row["age"] or 0))
            self._spawn(self._await_result(confirmation, left), f"kitt[confirmations].reconcile:{confirmation.id}")

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await self._sweep()
            except StoreError as exc:
                log.error("confirmation sweep failed", error=str(exc))

    async def _sweep(self) -> None:
        rows = await self._store.write_fetch(_SWEEP_SQL)
        wall = datetime.now(UTC)
        for cid in [cid for cid, row in self._known.items() if row["expires_at"] <= wall]:
            del self._known[cid]  # expired (or its request rolled back and it never existed)
        # The gauge scans the whole table: refreshed every few seconds, not on every half-second sweep.
        now = asyncio.get_running_loop().time()
        if rows or now - self._gauge_at >= GAUGE_INTERVAL_S:
            self._gauge_at = now
            await self._refresh_gauge()

    async def _refresh_gauge(self) -> None:
        by_state = (await self.status())["by_state"]
        for state in STATES:
            self._metrics.confirmations.labels(state=state).set(by_state.get(state, 0))

