"""The request / feedback / alert store: SQLite in the run directory by default, PostgreSQL when
given a URL (replicas then share it). SQLAlchemy Core, so one schema serves both.

Requests are written by a background thread (the event loop never waits on the disk); reads
and feedback flush it first, so what was answered can be rated at once. Rows older than
`monitor.retention_days` are deleted with their feedback.

    store = Store.open("sqlite:///runs/demo/monitor/requests.db")
    store.log_request({"id": "abc", "time": time.time(), "route": "/v1/chat/completions", ...})
    store.add_feedback("abc", rating=-1, correction='{"category": "billing"}')
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError

from tunesmith.errors import ConfigError
from tunesmith.events import event
from tunesmith.explain import connection_problem
from tunesmith.monitor.threads import background_priority

metadata = MetaData()

requests = Table(
    "requests", metadata,
    Column("id", String(64), primary_key=True),
    Column("time", Float, nullable=False, index=True),
    Column("route", String(64), nullable=False),
    Column("model", String(256)),
    Column("answered_by", String(256)),
    Column("status", Integer, nullable=False),
    Column("error_class", String(32)),
    Column("latency_ms", Float, nullable=False),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("cached", Boolean, default=False),
    Column("fallback_reason", String(32)),
    Column("prompt", Text),  # the conversation (JSON list of messages) or the completion prompt
    Column("response", Text),
)

feedback = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), ForeignKey("requests.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("time", Float, nullable=False),
    Column("rating", Integer, nullable=False),
    Column("correction", Text),
    Column("comment", Text),
    Column("label", String(16)),  # human review (tunesmith review): correct, wrong or harmful
)

REVIEW_ROUTE = "review"
"""The route of the request rows that stand for evaluated answers a person reviewed."""
REVIEW_RATINGS = {"correct": 1, "wrong": -1, "harmful": -1}

alerts = Table(
    "alerts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False, index=True),
    Column("rule", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("value", Float),
    Column("threshold", Float),
    Column("message", Text),
)

windows = Table(
    "windows", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False, index=True),
    Column("summary", Text, nullable=False),  # a window's numbers as JSON: latency, errors, drift, feedback
)


class UnknownRequest(LookupError):
    pass


def _unusable(url: str, error: Exception) -> ConfigError:
    """A store that cannot be opened, said without its password."""
    shown = url.split("@")[-1]
    return ConfigError(f"monitor store ...@{shown}: cannot connect ({connection_problem(error)}). "
                       "Check the URL (monitor.store or --store); PostgreSQL needs "
                       "`pip install 'tunesmith[distributed]'` and a reachable server.")


def _add_missing_columns(engine: Any) -> None:
    """Columns added after a store was created (feedback.label): ALTER TABLE, once."""
    from sqlalchemy import inspect, text

    present = {c["name"] for c in inspect(engine).get_columns("feedback")}
    if "label" not in present:
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE feedback ADD COLUMN label VARCHAR(16)"))


class Store:
    def __init__(self, url: str, retention_days: float = 30.0) -> None:
        self.url, self.retention = url, retention_days * 86400
        try:
            self.engine = create_engine(url, future=True)
            try:
                metadata.create_all(self.engine)
            except IntegrityError:  # another replica created the tables at the same moment
                metadata.create_all(self.engine)
            _add_missing_columns(self.engine)
        except Exception as error:  # SQLAlchemy and driver errors all mean "cannot use it"
            raise _unusable(url, error) from None
        self._pending: queue.Queue = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="tunesmith-store", daemon=True)
        self._writer.start()
        self._last_prune = 0.0

    @classmethod
    def open_existing(cls, url_or_path: str | Path, missing: str) -> Store:
        """A store that must already hold a log (reading it, not serving): `missing` says what to do."""
        if "://" not in str(url_or_path) and not Path(url_or_path).is_file():
            raise ConfigError(f"{url_or_path}: no request log yet. {missing}")
        return cls.open(url_or_path)

    @classmethod
    def open(cls, url_or_path: str | Path, retention_days: float = 30.0) -> Store:
        """A URL (postgresql://, sqlite:///...) or a file path for SQLite."""
        text = str(url_or_path)
        if "://" not in text:
            Path(text).parent.mkdir(parents=True, exist_ok=True)
            text = f"sqlite:///{Path(text).resolve()}"
        elif text.startswith("postgresql://"):
            text = "postgresql+psycopg://" + text[len("postgresql://"):]
        return cls(text, retention_days)

    # writing -----------------------------------------------------------------------------------

    def log_request(self, row: dict[str, Any]) -> None:
        """Queue a request row for the writer thread."""
        self._pending.put(row)

    def flush(self) -> None:
        """Wait until every queued row is written (written here once the writer has stopped)."""
        if self._writer.is_alive():
            self._pending.join()
        while not self._pending.empty():
            self._write([self._pending.get()])

    def close(self) -> None:
        """Stop the writer after what is queued; the store still answers (and writes) afterwards."""
        self.flush()
        self._pending.put(None)
        self._writer.join(timeout=10)

    def _write_loop(self) -> None:

        background_priority()
        while True:
            batch = [self._pending.get()]
            while batch[-1] is not None and not self._pending.empty() and len(batch) < 256:
                batch.append(self._pending.get())
            rows = [row for row in batch if row is not None]
            self._write(rows)
            for _ in batch:
                self._pending.task_done()
            if len(rows) < len(batch):
                return
            self._maybe_prune()

    def _write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(requests), rows)
        except Exception as error:  # the store must never take the server down
            event("store_error", error=f"{type(error).__name__}: {error}", rows=len(rows))

    def _maybe_prune(self) -> None:
        now = time.time()
        if now - self._last_prune < 60:
            return
        self._last_prune = now
        cutoff = now - self.retention
        with self.engine.begin() as connection:
            old = select(requests.c.id).where(requests.c.time < cutoff)
            connection.execute(delete(feedback).where(feedback.c.request_id.in_(old)))
            connection.execute(delete(requests).where(requests.c.time < cutoff))

    def prune(self) -> None:
        """Delete rows past the retention limit now."""
        self.flush()
        self._last_prune = 0.0
        self._maybe_prune()

    def add_feedback(self, request_id: str, rating: int, correction: str | None = None,
                     comment: str | None = None) -> dict[str, Any]:
        self.flush()
        with self.engine.begin() as connection:
            if connection.execute(select(requests.c.id).where(requests.c.id == request_id)).first() is None:
                raise UnknownRequest(request_id)
            row = {"request_id": request_id, "time": time.time(), "rating": rating, "correction": correction,
                   "comment": comment}
            row["id"] = connection.execute(insert(feedback).values(**row)).inserted_primary_key[0]
        return row

    def add_review(self, item_id: str, model: str, prompt: str, response: str, label: str,
                   note: str | None = None) -> dict[str, Any]:
        """A person's label of an evaluated answer (`tunesmith review`): feedback like production
        feedback, on a request row (route "review") that stands for the answer; a later label of
        the same item replaces the earlier one in `reviews()`."""
        request_id = f"review:{item_id}"
        with self.engine.begin() as connection:
            if connection.execute(select(requests.c.id).where(requests.c.id == request_id)).first() is None:
                connection.execute(insert(requests).values(
                    id=request_id, time=time.time(), route=REVIEW_ROUTE, model=model, answered_by=model,
                    status=200, latency_ms=0.0, prompt=prompt, response=response))
            row = {"request_id": request_id, "time": time.time(), "rating": REVIEW_RATINGS[label],
                   "label": label, "comment": note or None}
            row["id"] = connection.execute(insert(feedback).values(**row)).inserted_primary_key[0]
        return row

    def reviews(self) -> dict[str, dict[str, Any]]:
        """The latest review label of each reviewed item: {item id: feedback row}."""
        query = (select(feedback).join(requests, feedback.c.request_id == requests.c.id)
                 .where(requests.c.route == REVIEW_ROUTE).order_by(feedback.c.time, feedback.c.id))
        return {row["request_id"].removeprefix("review:"): row for row in self._rows(query)}

    def add_alert(self, rule: str, state: str, value: float, threshold: float, message: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(insert(alerts).values(time=time.time(), rule=rule, state=state, value=value,
                                                     threshold=threshold, message=message))

    def add_window(self, summary: dict[str, Any]) -> None:
        with self.engine.begin() as connection:
            text = json.dumps(summary, default=str)
            connection.execute(insert(windows).values(time=time.time(), summary=text))

    # reading -----------------------------------------------------------------------------------

    def _rows(self, query: Any) -> list[dict[str, Any]]:
        self.flush()
        with self.engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(query)]

    def recent_requests(self, limit: int = 1000) -> list[dict[str, Any]]:
        return self._rows(select(requests).where(requests.c.route != REVIEW_ROUTE)
                          .order_by(requests.c.time.desc()).limit(limit))

    def rated(self) -> list[dict[str, Any]]:
        """Every production feedback row with the request it rates (oldest first); review labels
        are read with `reviews()`."""
        query = (select(feedback, requests.c.prompt, requests.c.response, requests.c.answered_by,
                        requests.c.route)
                 .join(requests, feedback.c.request_id == requests.c.id)
                 .where(requests.c.route != REVIEW_ROUTE).order_by(feedback.c.time))
        return self._rows(query)

    def feedback_since(self, since: float) -> list[dict[str, Any]]:
        return self._rows(select(feedback).where(feedback.c.time >= since))

    def recent_alerts(self, limit: int = 50) -> list[dict[str, Any]]:
        return self._rows(select(alerts).order_by(alerts.c.time.desc()).limit(limit))

    def recent_windows(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._rows(select(windows).order_by(windows.c.time.desc()).limit(limit))
        return [{**json.loads(r["summary"]), "time": r["time"]} for r in reversed(rows)]

    def count(self, table: str = "requests") -> int:
        target = {"requests": requests, "feedback": feedback, "alerts": alerts, "windows": windows}[table]
        query = select(func.count()).select_from(target)
        if table == "requests":
            query = query.where(requests.c.route != REVIEW_ROUTE)
        return self._rows(query)[0]["count_1"]
