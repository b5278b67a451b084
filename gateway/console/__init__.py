"""The operators' web console at ``/console``: what arrived, why it failed, where it went; replay it.

Server-rendered pages (Jinja through Flask), no JavaScript framework: the pages are tables and
forms, and a plain page reloads fine on a console that is opened a few times an hour. Text in
English or Chinese (zh-CN), chosen by the browser's Accept-Language (Flask-Babel; the catalogue is
``translations/zh/LC_MESSAGES/messages.po``, compiled to ``.mo`` beside it).

Sign-in is with an admin client's id and secret (the same credentials as ``/auth/token``); the
session cookie is Secure, HttpOnly and SameSite=Strict, signed with ``CONSOLE_SECRET_KEY`` (or the
deployment's random key, kept in the database) and lasts ``CONSOLE_SESSION_MINUTES``.
Every form carries a CSRF token (Flask-WTF's CSRFProtect, checked on every POST here and only
here: the API takes bearer tokens, not cookies). Every page and action is audited by the security
hooks like any request, with the signed-in client as the agent; a replay also gets its own
AuditEvent per message (``gateway.ingest.admin.audit_replays``). The reads and actions are the
message log's, the outbox's and the client registry's own: nothing here decides anything.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from flask import Blueprint, Flask, abort, current_app, flash, g, redirect, render_template, request, session, url_for
from flask_babel import Babel, get_locale, gettext as _
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import func, select

from gateway.ingest.admin import audit_replays, filter_from, replay_text
from gateway.ingest.message_browser import ACK_CODES, STATUSES, find_messages, message_detail
from gateway.ingest.replay import replay_message
from gateway.store.schema import deliveries, message_log
from gateway.web import gateway_of_app

console_blueprint = Blueprint("console", __name__, url_prefix="/console", template_folder="templates")
LANGUAGES = ("en", "zh")
PAGE = 50


def install_console(app: Flask) -> None:
    """Register the console, its translations and CSRF protection on ``app``."""
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _session_key(app)
    app.config.update(SESSION_COOKIE_NAME="lecheng_console", SESSION_COOKIE_SECURE=True,
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                      PERMANENT_SESSION_LIFETIME=timedelta(minutes=int(app.config.get("CONSOLE_SESSION_MINUTES") or 480)),
                      WTF_CSRF_CHECK_DEFAULT=False, WTF_CSRF_TIME_LIMIT=None)
    Babel(app, locale_selector=_locale,
          default_translation_directories=str(Path(__file__).parent / "translations"))
    app.extensions["console_csrf"] = CSRFProtect(app)
    app.register_blueprint(console_blueprint)


def _session_key(app: Flask) -> str:
    """``CONSOLE_SECRET_KEY``, else the deployment's own, kept in the database (gateway/security/shared_secrets.py)."""
    if app.config.get("CONSOLE_SECRET_KEY"):
        return str(app.config["CONSOLE_SECRET_KEY"])
    from gateway.security.shared_secrets import shared_secret
    engine = app.extensions["gateway"].store.engine
    return shared_secret(engine, "console-session", Path(app.config["DATA_DIR"]) / "console-session.key").decode()


def _locale() -> str:
    for language in request.accept_languages.values():
        primary = language.lower().split("-")[0]
        if primary in LANGUAGES:
            return primary
    return "en"


@console_blueprint.context_processor
def _template_helpers() -> dict:
    return {"get_locale": get_locale}


# ------------------------------------------------------------------ sign-in

@console_blueprint.before_request
def _signed_in():
    if request.method == "POST":
        current_app.extensions["console_csrf"].protect()
    if request.endpoint in ("console.login", "console.static"):
        return None
    client_id = session.get("client_id")
    client = current_app.extensions["security"].clients.get(client_id) if client_id else None
    if client is None or not client.active or client.role != "admin":
        session.clear()
        return redirect(url_for("console.login"))
    from gateway.security.principal import Principal
    from gateway.security.scopes import ROLE_SCOPES, parse_scopes
    g.principal = Principal(client.client_id, client.organization, client.role, parse_scopes(ROLE_SCOPES["admin"]))
    return None


@console_blueprint.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        client_id = request.form.get("client_id", "").strip()
        security = current_app.extensions["security"]
        client = security.clients.authenticate_secret(client_id, request.form.get("client_secret", ""))
        if client is None or client.role != "admin":
            g.refusal_text = f"console sign-in refused for {client_id!r}"
            error = _("Unknown client, wrong secret, or not an admin client.")
        else:
            session.clear()
            session.permanent = True
            session["client_id"] = client.client_id
            session["signed_in"] = time.time()
            g.token_client_id, g.token_client_org, g.token_client_role = client.client_id, client.organization, "admin"
            g.refusal_text = "console sign-in"
            return redirect(url_for("console.overview"))
    return render_template("console/login.html", error=error), (401 if error else 200)


@console_blueprint.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("console.login"))


# ------------------------------------------------------------------ pages

@console_blueprint.get("/")
def overview():
    """Messages per minute by sender and outcome over the last hour, the error rate, and the
    delivery backlog and dead letters per destination."""
    engine = gateway_of_app().store.engine
    since = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    minute = func.substr(message_log.c.received_at, 1, 16)
    with engine.connect() as conn:
        rows = conn.execute(select(minute, message_log.c.sender_facility, message_log.c.status, func.count())
                            .where(message_log.c.received_at >= since)
                            .group_by(minute, message_log.c.sender_facility, message_log.c.status)
                            .order_by(minute.desc())).all()
        routed = conn.execute(select(deliveries.c.destination, deliveries.c.status, func.count(),
                                     func.min(deliveries.c.created_at))
                              .group_by(deliveries.c.destination, deliveries.c.status)).all()
    per_minute: dict[tuple, dict[str, int]] = {}
    totals = {"all": 0, "failed": 0}
    for at, sender, status, count in rows:
        per_minute.setdefault((at.replace("T", " "), sender or "-"), {})[status] = count
        totals["all"] += count
        totals["failed"] += count if status in ("error", "rejected") else 0
    destinations: dict[str, dict] = {}
    now = time.time()
    for destination, status, count, oldest in routed:
        entry = destinations.setdefault(destination, {"statuses": {}, "backlog": 0, "dead": 0, "oldest": None})
        entry["statuses"][status] = count
        if status in ("pending", "failed"):
            entry["backlog"] += count
            age = int(now - oldest)
            entry["oldest"] = max(entry["oldest"] or 0, age)
        if status == "dead":
            entry["dead"] += count
    rate = (100.0 * totals["failed"] / totals["all"]) if totals["all"] else 0.0
    return render_template("console/overview.html", per_minute=per_minute, totals=totals, error_rate=rate,
                           destinations=destinations, statuses=STATUSES)


@console_blueprint.get("/messages")
def messages():
    criteria = filter_from({k: v for k, v in request.args.items() if v})
    problems = criteria.problems()
    page = []
    before = request.args.get("before", type=int)
    if not problems:
        try:
            page = find_messages(gateway_of_app().store.engine, criteria, PAGE, before)
        except ValueError as exc:
            problems = [str(exc)]
    older = ({**{k: v for k, v in request.args.items() if k != "before"}, "before": page[-1].id}
             if len(page) == PAGE else None)
    return render_template("console/messages.html", page=page, problems=problems, args=request.args,
                           statuses=STATUSES, ack_codes=ACK_CODES[:3], older=older)


@console_blueprint.get("/messages/<int:log_id>")
def message(log_id: int):
    gateway = gateway_of_app()
    found = message_detail(gateway.store.engine, log_id, gateway.config["FALLBACK_CHARSET"])
    if found is None:
        abort(404, f"message {log_id} is not in the message log")
    return render_template("console/message.html", m=found)


@console_blueprint.post("/messages/<int:log_id>/replay")
def replay(log_id: int):
    outcome = replay_message(gateway_of_app(), log_id, by=f"client {g.principal.client_id} (console)",
                             force=request.form.get("force") == "1")
    if outcome.after == "missing":
        abort(404, outcome.reason)
    audit_replays([outcome])
    flash(replay_text(outcome), "ok" if outcome.after in ("processed", "on-hold", "skipped") else "error")
    return redirect(url_for("console.message", log_id=log_id))


@console_blueprint.get("/deliveries")
def delivery_list():
    from gateway.routing.outbox import STATUSES as DELIVERY_STATUSES
    status = request.args.get("status") or None
    if status is not None and status not in DELIVERY_STATUSES:
        status = None
    outbox = gateway_of_app().outbox
    after = request.args.get("after", type=int) or 0
    page = outbox.list(status, request.args.get("destination") or None, PAGE, after)
    return render_template("console/deliveries.html", page=page, counts=outbox.counts(), status=status,
                           statuses=DELIVERY_STATUSES, destination=request.args.get("destination", ""),
                           more=page[-1].id if len(page) == PAGE else None)


@console_blueprint.post("/deliveries/<int:delivery_id>/replay")
def delivery_replay(delivery_id: int):
    from gateway.routing.outbox import ReplayRefused
    try:
        delivery = gateway_of_app().outbox.replay(delivery_id)
        g.refusal_text = f"delivery {delivery_id} queued again"
        flash(_("Delivery %(id)s to %(destination)s queued again.", id=delivery.id,
                destination=delivery.destination), "ok")
    except KeyError:
        abort(404, f"delivery {delivery_id} is not known")
    except ReplayRefused as exc:
        g.refusal_text = f"delivery {delivery_id}: {exc}"
        flash(str(exc), "error")
    return redirect(url_for("console.delivery_list", status=request.form.get("status") or None))


@console_blueprint.get("/clients")
def clients():
    from gateway.security.scopes import ROLES
    registry = current_app.extensions["security"].clients
    return render_template("console/clients.html", clients=[c.public_view() for c in registry.all()], roles=ROLES,
                           new_secret=session.pop("new_secret", None))


@console_blueprint.post("/clients")
def client_action():
    from gateway.security.clients import ClientError
    registry = current_app.extensions["security"].clients
    action, client_id = request.form.get("action"), request.form.get("client_id", "").strip()
    try:
        if action == "add":
            addresses = [a.strip() for a in request.form.get("mllp_address", "").split(",") if a.strip()]
            _client, secret = registry.add(client_id, request.form.get("organization", "").strip(),
                                           request.form.get("role", ""), mllp_addresses=addresses,
                                           description=request.form.get("description", ""))
            session["new_secret"] = {"client_id": client_id, "secret": secret}
        elif action == "rotate":
            session["new_secret"] = {"client_id": client_id, "secret": registry.rotate(client_id)}
        elif action == "revoke":
            if client_id == g.principal.client_id:
                raise ClientError("you cannot revoke the client you are signed in with")
            registry.revoke(client_id)
            flash(_("%(id)s revoked: its tokens are refused from now on.", id=client_id), "ok")
        else:
            abort(400, "unknown action")
        g.refusal_text = f"client {client_id}: {action}"
    except (ClientError, ValueError) as exc:
        g.refusal_text = f"client {client_id}: {action} refused: {exc}"
        flash(str(exc), "error")
    return redirect(url_for("console.clients"))
