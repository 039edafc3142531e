"""A local stand-in for the Kibana API paths prod's setup Job uses, and nothing else.

It implements, as Kibana's API references document them (8.x): ``GET /api/status``,
``POST /api/saved_objects/_import?overwrite=true`` (multipart ``file``, an ``.ndjson`` file),
``GET``/``POST``/``PUT /api/actions/connector/<id>`` and ``GET``/``POST``/``PUT
/api/alerting/rule/<id>``, with Basic authentication and the ``kbn-xsrf`` header on every write.
Bodies are validated against the documented shapes: the create and update fields of rules and
connectors, ids that are UUIDs (Kibana requires them for objects with encrypted attributes), the
rule types and connector types of the Basic licence used here with their parameter schemas (from
Kibana's source: ``core_query_types.ts`` and ``index_threshold/rule_type_params.ts`` for
``.index-threshold``, ``register_custom_threshold_rule_type.ts`` for the custom threshold rule),
the action groups of each rule type, KQL syntax, and references between saved objects. Anything
else (another path, method, field or value) is answered 400/404/405 and recorded in
:attr:`KibanaState.refused`, so a test can insist that nothing was refused.
"""

from __future__ import annotations

import base64
import copy
import email.parser
import email.policy
import json
import re
import ssl
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

# --- KQL ---------------------------------------------------------------------------------------------

_KQL_TOKEN = re.compile(r'\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<cmp>>=|<=|>|<)|(?P<colon>:)|"(?P<q>(?:[^"\\]|\\.)*)"'
                        r'|(?P<word>[^\s():<>"\\]+))')


def _kql_tokens(query: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(query):
        if query[pos:].strip() == "":
            break
        match = _KQL_TOKEN.match(query, pos)
        if not match or match.end() == pos:
            raise ValueError(f"KQL: unexpected character at {pos} in {query!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


class _Kql:
    """Recursive descent over the KQL subset Kibana documents: ``field: value``, ``field: (a or b)``,
    ``field >= n``, ``not``, ``and``, ``or`` and parentheses."""

    def __init__(self, query: str) -> None:
        self.tokens = _kql_tokens(query)
        self.i = 0
        self.fields: set[str] = set()

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, kind: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (kind and token[0] != kind):
            raise ValueError(f"KQL: expected {kind or 'a term'} at token {self.i}")
        self.i += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token and token[0] == "word" and token[1].lower() == word:
            self.i += 1
            return True
        return False

    def parse(self) -> set[str]:
        if self.tokens:
            self.or_expr()
        if self.peek() is not None:
            raise ValueError(f"KQL: unexpected {self.peek()}")
        return self.fields

    def or_expr(self) -> None:
        self.and_expr()
        while self.keyword("or"):
            self.and_expr()

    def and_expr(self) -> None:
        self.not_expr()
        while self.keyword("and"):
            self.not_expr()

    def not_expr(self) -> None:
        if self.keyword("not"):
            self.not_expr()
            return
        token = self.peek()
        if token and token[0] == "lp":
            self.take("lp")
            self.or_expr()
            self.take("rp")
            return
        name = self.take("word")[1]
        nxt = self.peek()
        if nxt and nxt[0] == "cmp":
            self.take("cmp")
            value = self.take()
            if value[0] not in ("word", "q"):
                raise ValueError("KQL: a range needs a value")
        elif nxt and nxt[0] == "colon":
            self.take("colon")
            self.value_list()
        else:
            raise ValueError(f"KQL: free text {name!r} is not allowed here: name a field")
        self.fields.add(name)

    def value_list(self) -> None:
        token = self.peek()
        if token and token[0] == "lp":
            self.take("lp")
            self.value()
            while self.keyword("or") or self.keyword("and"):
                self.value()
            self.take("rp")
        else:
            self.value()

    def value(self) -> None:
        kind, _ = self.take()
        if kind not in ("word", "q"):
            raise ValueError("KQL: expected a value")


def kql_fields(query: str) -> set[str]:
    """The fields a KQL query names; ValueError if it is not valid KQL."""
    return _Kql(query).parse()


# --- documented shapes ---------------------------------------------------------------------------------

RULE_CREATE_FIELDS = {"name", "rule_type_id", "consumer", "enabled", "tags", "throttle", "params", "schedule",
                      "actions", "notify_when", "alert_delay"}
RULE_CREATE_REQUIRED = {"name", "rule_type_id", "consumer", "schedule"}
RULE_UPDATE_FIELDS = {"name", "tags", "throttle", "params", "schedule", "actions", "notify_when", "alert_delay"}
RULE_UPDATE_REQUIRED = {"name", "schedule"}
ACTION_FIELDS = {"group", "id", "params", "frequency", "uuid", "alerts_filter", "use_alert_data_for_template"}
NOTIFY_WHEN = {"onActionGroupChange", "onActiveAlert", "onThrottleInterval"}
CONSUMERS = {"alerts", "stackAlerts", "logs", "infrastructure", "observability", "apm", "uptime", "slo",
             "monitoring", "ml", "siem", "discover"}
#: Rule types used here: license, action groups.
RULE_TYPES: dict[str, dict[str, Any]] = {
    ".index-threshold": {"license": "basic", "groups": {"threshold met", "recovered"}},
    "observability.rules.custom_threshold": {"license": "basic",
                                             "groups": {"custom_threshold.fired", "custom_threshold.nodata",
                                                        "recovered"}},
}
CONNECTOR_CREATE_FIELDS = {"name", "connector_type_id", "config", "secrets"}
CONNECTOR_UPDATE_FIELDS = {"name", "config", "secrets"}
#: Connector types used here (both in the Basic licence): config keys, required config, action params.
CONNECTOR_TYPES: dict[str, dict[str, Any]] = {
    ".server-log": {"license": "basic", "config": set(), "required": set(), "params": {"message", "level"},
                    "required_params": {"message"}},
    ".index": {"license": "basic", "config": {"index", "refresh", "executionTimeField"}, "required": {"index"},
               "params": {"documents", "indexOverride"}, "required_params": {"documents"}},
}
SERVER_LOG_LEVELS = {"trace", "debug", "info", "warn", "error", "fatal"}
SAVED_OBJECT_TYPES = {"index-pattern", "dashboard", "lens", "visualization", "search"}
COMPARATORS = {">", "<", ">=", "<=", "between", "notBetween"}
_DURATION = re.compile(r"^\d+[smhd]$")


class Invalid(ValueError):
    """A body Kibana would refuse (400)."""


def _check_keys(body: Any, allowed: set[str], required: set[str], where: str) -> None:
    if not isinstance(body, dict):
        raise Invalid(f"{where}: expected an object")
    unknown, missing = set(body) - allowed, required - set(body)
    if unknown:
        raise Invalid(f"{where}: [{sorted(unknown)[0]}]: definition for this key is missing")
    if missing:
        raise Invalid(f"{where}: [{sorted(missing)[0]}]: expected value but got undefined")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_kql(query: Any, where: str) -> set[str]:
    if not isinstance(query, str):
        raise Invalid(f"{where}: expected a string")
    try:
        return kql_fields(query)
    except ValueError as exc:
        raise Invalid(f"{where}: Filter query is invalid. ({exc})") from None


def check_index_threshold(params: Any) -> None:
    core = {"index", "timeField", "aggType", "aggField", "groupBy", "termField", "filterKuery", "termSize",
            "timeWindowSize", "timeWindowUnit"}
    _check_keys(params, core | {"thresholdComparator", "threshold"},
                {"index", "timeField", "timeWindowSize", "timeWindowUnit", "thresholdComparator", "threshold"},
                "params")
    index = params["index"]
    if not (isinstance(index, str) and index) and not (
            isinstance(index, list) and index and all(isinstance(i, str) and i for i in index)):
        raise Invalid("params.index: a non-empty string or array of strings")
    agg = params.get("aggType", "count")
    if agg not in {"count", "avg", "min", "max", "sum"}:
        raise Invalid(f'params.aggType: invalid aggType: "{agg}"')
    if agg != "count" and not params.get("aggField"):
        raise Invalid(f'[aggField]: must have a value when [aggType] is "{agg}"')
    group = params.get("groupBy", "all")
    if group not in {"all", "top"}:
        raise Invalid(f'invalid groupBy: "{group}"')
    if group == "top":
        if params.get("termField") is None:
            raise Invalid("[termField]: termField required when [groupBy] is top")
        size = params.get("termSize")
        if not _number(size) or not 1 <= size <= 1000:
            raise Invalid("[termSize]: termSize required when [groupBy] is top, at most 1000")
    if not _number(params["timeWindowSize"]) or params["timeWindowSize"] < 1:
        raise Invalid("params.timeWindowSize: a number >= 1")
    if params["timeWindowUnit"] not in {"s", "m", "h", "d"}:
        raise Invalid(f'invalid timeWindowUnit: "{params["timeWindowUnit"]}"')
    if "filterKuery" in params:
        check_kql(params["filterKuery"], "params.filterKuery")
    comparator, threshold = params["thresholdComparator"], params["threshold"]
    if comparator not in COMPARATORS:
        raise Invalid(f"invalid thresholdComparator specified: {comparator}")
    if not (isinstance(threshold, list) and 1 <= len(threshold) <= 2 and all(_number(t) for t in threshold)):
        raise Invalid("params.threshold: an array of 1 or 2 numbers")
    if comparator in {"between", "notBetween"} and len(threshold) == 1:
        raise Invalid(f'[threshold]: must have two elements for the "{comparator}" comparator')


CUSTOM_AGGREGATORS = {"avg", "sum", "min", "max", "cardinality", "rate", "p95", "p99", "last_value"}
_EQUATION = re.compile(r"^[A-Z0-9.+\-*/() ]+$")


def check_custom_threshold(params: Any, data_views: set[str]) -> None:
    _check_keys(params, {"criteria", "groupBy", "alertOnNoData", "alertOnGroupDisappear", "searchConfiguration"},
                {"criteria", "searchConfiguration"}, "params")
    if not isinstance(params["criteria"], list) or not params["criteria"]:
        raise Invalid("params.criteria: an array of criteria")
    for i, criterion in enumerate(params["criteria"]):
        where = f"params.criteria.{i}"
        _check_keys(criterion, {"threshold", "comparator", "timeUnit", "timeSize", "aggType", "metrics", "equation",
                                "label"}, {"threshold", "comparator", "timeUnit", "timeSize", "metrics"}, where)
        if criterion.get("aggType", "custom") != "custom":
            raise Invalid(f"{where}.aggType: expected value to equal [custom]")
        if criterion["comparator"] not in COMPARATORS:
            raise Invalid(f"{where}.comparator: invalid")
        if not (isinstance(criterion["threshold"], list) and all(_number(t) for t in criterion["threshold"])):
            raise Invalid(f"{where}.threshold: an array of numbers")
        if not isinstance(criterion["timeUnit"], str) or not _number(criterion["timeSize"]):
            raise Invalid(f"{where}: timeUnit is a string, timeSize a number")
        names = set()
        for j, metric in enumerate(criterion["metrics"]):
            at = f"{where}.metrics.{j}"
            if isinstance(metric, dict) and metric.get("aggType") == "count":
                _check_keys(metric, {"name", "aggType", "filter"}, {"name", "aggType"}, at)
                if "filter" in metric:
                    check_kql(metric["filter"], f"{at}.filter")
            else:
                _check_keys(metric, {"name", "aggType", "field"}, {"name", "aggType", "field"}, at)
                if metric["aggType"] not in CUSTOM_AGGREGATORS:
                    raise Invalid(f"{at}.aggType: invalid")
                if not isinstance(metric["field"], str) or not metric["field"]:
                    raise Invalid(f"{at}.field: a field name")
            names.add(metric["name"])
        equation = criterion.get("equation")
        if equation is not None:
            if not isinstance(equation, str) or not _EQUATION.match(equation):
                raise Invalid(f"{where}.equation: only metric names, numbers, + - * / and parentheses")
            unknown = set(re.findall(r"[A-Z]", equation)) - names
            if unknown:
                raise Invalid(f"{where}.equation: {sorted(unknown)} is not a metric")
    group = params.get("groupBy")
    if group is not None and not (isinstance(group, str) or (
            isinstance(group, list) and all(isinstance(g, str) for g in group))):
        raise Invalid("params.groupBy: a field or an array of fields")
    search = params["searchConfiguration"]
    _check_keys(search, {"index", "query", "filter"}, {"index", "query"}, "params.searchConfiguration")
    if not isinstance(search["index"], str) or search["index"] not in data_views:
        raise Invalid(f"params.searchConfiguration.index: no data view {search['index']!r}")
    _check_keys(search["query"], {"language", "query"}, {"language", "query"}, "params.searchConfiguration.query")
    if search["query"]["language"] != "kuery":
        raise Invalid("params.searchConfiguration.query.language: kuery")
    check_kql(search["query"]["query"], "params.searchConfiguration.query.query")


def check_rule_params(rule_type: str, params: Any, data_views: set[str]) -> None:
    if rule_type == ".index-threshold":
        check_index_threshold(params)
    elif rule_type == "observability.rules.custom_threshold":
        check_custom_threshold(params, data_views)
    else:
        raise Invalid(f"Rule type {rule_type!r} is not registered (or needs a licence above Basic)")


def check_actions(rule_type: str, actions: Any, connectors: dict[str, dict[str, Any]]) -> None:
    if not isinstance(actions, list):
        raise Invalid("actions: an array")
    for i, action in enumerate(actions):
        where = f"actions.{i}"
        _check_keys(action, ACTION_FIELDS, {"id"}, where)
        if action.get("group") not in RULE_TYPES[rule_type]["groups"]:
            raise Invalid(f"{where}.group: invalid action group {action.get('group')!r} for {rule_type}")
        connector = connectors.get(action["id"])
        if connector is None:
            raise Invalid(f"{where}.id: saved object [action/{action['id']}] not found")
        kind = CONNECTOR_TYPES[connector["connector_type_id"]]
        params = action.get("params", {})
        _check_keys(params, kind["params"], kind["required_params"], f"{where}.params")
        if connector["connector_type_id"] == ".server-log" and params.get("level", "info") not in SERVER_LOG_LEVELS:
            raise Invalid(f"{where}.params.level: invalid")
        if connector["connector_type_id"] == ".index" and not (
                isinstance(params["documents"], list) and all(isinstance(d, dict) for d in params["documents"])):
            raise Invalid(f"{where}.params.documents: an array of objects")
        if "frequency" in action:
            frequency = action["frequency"]
            _check_keys(frequency, {"summary", "notify_when", "throttle"}, {"summary", "notify_when", "throttle"},
                        f"{where}.frequency")
            if frequency["notify_when"] not in NOTIFY_WHEN:
                raise Invalid(f"{where}.frequency.notify_when: invalid")


def check_rule_common(body: dict[str, Any]) -> None:
    if not isinstance(body.get("name"), str) or not body["name"]:
        raise Invalid("name: a string")
    schedule = body["schedule"]
    _check_keys(schedule, {"interval"}, {"interval"}, "schedule")
    if not isinstance(schedule["interval"], str) or not _DURATION.match(schedule["interval"]):
        raise Invalid("schedule.interval: a duration such as 1m")
    if "tags" in body and not (isinstance(body["tags"], list) and all(isinstance(t, str) for t in body["tags"])):
        raise Invalid("tags: an array of strings")
    if "alert_delay" in body:
        _check_keys(body["alert_delay"], {"active"}, {"active"}, "alert_delay")
        if not _number(body["alert_delay"]["active"]):
            raise Invalid("alert_delay.active: a number")
    if "notify_when" in body and body["notify_when"] is not None and body["notify_when"] not in NOTIFY_WHEN:
        raise Invalid("notify_when: invalid")


def is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


# --- state and server ----------------------------------------------------------------------------------

@dataclass
class KibanaState:
    password: str = "elastic-password"
    #: ``GET /api/status`` answers 503 this many times first (Kibana still starting).
    unavailable: int = 0
    saved_objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    connectors: dict[str, dict[str, Any]] = field(default_factory=dict)
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: (method, path, status) of every request, in order.
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    #: Why requests were refused.
    refused: list[str] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy({"saved_objects": self.saved_objects, "connectors": self.connectors,
                              "rules": self.rules})

    def data_views(self) -> set[str]:
        return {object_id for kind, object_id in self.saved_objects if kind == "index-pattern"}


def _compact(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _panel_references(dashboard: dict[str, Any]) -> list[str]:
    """Problems of a dashboard's panels: unparsable panelsJSON, by-value references not in the dashboard's."""
    problems = []
    try:
        panels = json.loads(dashboard["attributes"]["panelsJSON"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        return [f"panelsJSON: {exc}"]
    names = {r["name"] for r in dashboard.get("references", [])}
    for panel in panels:
        for ref in panel.get("embeddableConfig", {}).get("attributes", {}).get("references", []):
            if f"{panel.get('panelIndex')}:{ref['name']}" not in names:
                problems.append(f"panel {panel.get('panelIndex')}: reference {ref['name']} is not in the dashboard's")
    return problems


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    #: HTTP/1.1, so that curl's ``Expect: 100-continue`` is answered at once.
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # the base class's signature
        return

    @property
    def state(self) -> KibanaState:
        return self.server.state

    def _answer(self, status: int, body: Any, why: str | None = None) -> None:
        url = urlsplit(self.path)
        self.state.requests.append((self.command, url.path + (f"?{url.query}" if url.query else ""), status))
        if why is not None:
            self.state.refused.append(f"{self.command} {self.path}: {why}")
        data = _compact(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        names = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
                 409: "Conflict"}
        self._answer(status, {"statusCode": status, "error": names.get(status, "Error"), "message": message},
                     why=message)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json(self) -> Any:
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            raise Invalid("Content-Type must be application/json")
        try:
            return json.loads(self._body())
        except json.JSONDecodeError as exc:
            raise Invalid(f"Unexpected token in JSON: {exc}") from None

    def _authorised(self) -> bool:
        expected = "Basic " + base64.b64encode(f"elastic:{self.state.password}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self._error(401, "[security_exception]: unable to authenticate user")
            return False
        if self.command != "GET" and not self.headers.get("kbn-xsrf"):
            self._error(400, "Request must contain a kbn-xsrf header.")
            return False
        return True

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def do_PUT(self) -> None:
        self._route()

    def do_DELETE(self) -> None:
        self._route()

    def _route(self) -> None:
        if not self._authorised():
            return
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        try:
            if path == "/api/status":
                if self.command != "GET":
                    return self._error(405, "method not allowed")
                if self.state.unavailable > 0:
                    self.state.unavailable -= 1
                    return self._answer(503, {"status": {"overall": {"level": "unavailable"}}})
                return self._answer(200, {"status": {"overall": {"level": "available"}}})
            if path == "/api/saved_objects/_import":
                if self.command != "POST":
                    return self._error(405, "method not allowed")
                return self._import(query)
            match = re.fullmatch(r"/api/(actions/connector|alerting/rule)/([^/]+)", path)
            if match and not query:
                kind, object_id = match.groups()
                if not is_uuid(object_id):
                    return self._error(400, f"Predefined IDs are not allowed for saved objects with encrypted "
                                            f"attributes unless the ID is a UUID: {object_id}")
                if kind == "actions/connector":
                    return self._connector(object_id)
                return self._rule(object_id)
            return self._error(404, f"Not Found: {path}")
        except Invalid as exc:
            return self._error(400, str(exc))

    def _import(self, query: dict[str, list[str]]) -> None:
        if query != {"overwrite": ["true"]}:
            raise Invalid(f"this stand-in imports with overwrite=true only, got {query}")
        content_type = self.headers.get("Content-Type") or ""
        if not content_type.startswith("multipart/form-data"):
            raise Invalid("Unsupported Media Type: multipart/form-data expected")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + self._body())
        parts = [p for p in message.iter_parts() if p.get_param("name", header="content-disposition") == "file"]
        if len(parts) != 1:
            raise Invalid("[request body.file]: expected value of type [Stream] but got [undefined]")
        filename = parts[0].get_filename() or ""
        if not filename.endswith(".ndjson"):
            raise Invalid(f"Invalid file extension {Path(filename).suffix or '(none)'}")
        payload = parts[0].get_payload(decode=True)
        assert isinstance(payload, bytes)
        objects = []
        for number, line in enumerate(payload.decode().splitlines(), 1):
            if not line.strip():
                continue
            try:
                objects.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise Invalid(f"line {number}: {exc}") from None
        in_file = {(o.get("type"), o.get("id")) for o in objects}
        errors, results = [], []
        for obj in objects:
            key = (obj.get("type"), obj.get("id"))
            allowed = {"type", "id", "attributes", "references", "coreMigrationVersion", "typeMigrationVersion",
                       "managed", "namespaces"}
            problem = None
            if obj.get("type") not in SAVED_OBJECT_TYPES:
                problem = {"type": "unsupported_type"}
            elif set(obj) - allowed or not isinstance(obj.get("attributes"), dict) or not obj.get("id"):
                problem = {"type": "unknown", "message": f"invalid object keys {sorted(set(obj) - allowed)}"}
            else:
                known = in_file | set(self.state.saved_objects)
                missing = [r for r in obj.get("references", []) if (r["type"], r["id"]) not in known]
                if missing:
                    problem = {"type": "missing_references", "references": missing}
                elif obj["type"] == "dashboard" and _panel_references(obj):
                    problem = {"type": "unknown", "message": "; ".join(_panel_references(obj))}
            if problem:
                errors.append({"type": obj.get("type"), "id": obj.get("id"), "error": problem})
                continue
            results.append({"type": obj["type"], "id": obj["id"], "overwrite": key in self.state.saved_objects})
        if errors:
            self.state.refused.append(f"import: {errors}")
            return self._answer(200, {"success": False, "successCount": 0, "errors": errors, "warnings": []})
        for obj in objects:
            self.state.saved_objects[(obj["type"], obj["id"])] = obj
        self._answer(200, {"successCount": len(results), "success": True, "warnings": [], "successResults": results})

    def _connector(self, connector_id: str) -> None:
        existing = self.state.connectors.get(connector_id)
        if self.command == "GET":
            if existing is None:
                return self._answer(404, {"statusCode": 404, "error": "Not Found",
                                          "message": f"Saved object [action/{connector_id}] not found"})
            return self._answer(200, {"id": connector_id, **existing})
        if self.command == "POST":
            body = self._json()
            _check_keys(body, CONNECTOR_CREATE_FIELDS, {"name", "connector_type_id"}, "body")
            if existing is not None:
                return self._error(409, f"Saved object [action/{connector_id}] conflict")
            kind = CONNECTOR_TYPES.get(body["connector_type_id"])
            if kind is None:
                raise Invalid(f"connector type {body['connector_type_id']!r} is not enabled (or not in Basic)")
            self._check_connector(kind, body)
            self.state.connectors[connector_id] = body
            return self._answer(200, {"id": connector_id, **body})
        if self.command == "PUT":
            body = self._json()
            _check_keys(body, CONNECTOR_UPDATE_FIELDS, {"name"}, "body")
            if existing is None:
                return self._answer(404, {"statusCode": 404, "error": "Not Found", "message": "not found"},
                                    why="update of a missing connector")
            self._check_connector(CONNECTOR_TYPES[existing["connector_type_id"]], body)
            self.state.connectors[connector_id] = {**body, "connector_type_id": existing["connector_type_id"]}
            return self._answer(200, {"id": connector_id, **self.state.connectors[connector_id]})
        return self._error(405, "method not allowed")

    @staticmethod
    def _check_connector(kind: dict[str, Any], body: dict[str, Any]) -> None:
        _check_keys(body.get("config", {}), kind["config"], kind["required"], "config")
        _check_keys(body.get("secrets", {}), set(), set(), "secrets")

    def _rule(self, rule_id: str) -> None:
        existing = self.state.rules.get(rule_id)
        if self.command == "GET":
            if existing is None:
                return self._answer(404, {"statusCode": 404, "error": "Not Found",
                                          "message": f"Saved object [alert/{rule_id}] not found"})
            return self._answer(200, {"id": rule_id, **existing})
        if self.command == "POST":
            body = self._json()
            _check_keys(body, RULE_CREATE_FIELDS, RULE_CREATE_REQUIRED, "body")
            if existing is not None:
                return self._error(409, f"Saved object [alert/{rule_id}] conflict")
            if body["rule_type_id"] not in RULE_TYPES:
                raise Invalid(f"Rule type {body['rule_type_id']!r} is not registered (or needs a licence above Basic)")
            if body["consumer"] not in CONSUMERS:
                raise Invalid(f"Unauthorized consumer {body['consumer']!r}")
            check_rule_common(body)
            check_rule_params(body["rule_type_id"], body.get("params", {}), self.state.data_views())
            check_actions(body["rule_type_id"], body.get("actions", []), self.state.connectors)
            self.state.rules[rule_id] = {"enabled": True, "tags": [], "actions": [], **body}
            return self._answer(200, {"id": rule_id, **self.state.rules[rule_id]})
        if self.command == "PUT":
            body = self._json()
            _check_keys(body, RULE_UPDATE_FIELDS, RULE_UPDATE_REQUIRED, "body")
            if existing is None:
                return self._answer(404, {"statusCode": 404, "error": "Not Found", "message": "not found"},
                                    why="update of a missing rule")
            check_rule_common(body)
            check_rule_params(existing["rule_type_id"], body.get("params", {}), self.state.data_views())
            check_actions(existing["rule_type_id"], body.get("actions", []), self.state.connectors)
            fixed = {k: existing[k] for k in ("rule_type_id", "consumer", "enabled")}
            self.state.rules[rule_id] = {"tags": [], "actions": [], **body, **fixed}
            return self._answer(200, {"id": rule_id, **self.state.rules[rule_id]})
        return self._error(405, "method not allowed")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: KibanaState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class FakeKibana:
    """Serve :class:`KibanaState` on 127.0.0.1 (HTTPS when given a certificate and key)."""

    def __init__(self, state: KibanaState, cert: Path | None = None, key: Path | None = None) -> None:
        self.state = state
        self.server = _Server(state)
        self.scheme = "http"
        if cert is not None and key is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeKibana:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def self_signed(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (as ECK's Kibana has its own CA): (ca, cert, key)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "logs-http")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "logs-kb-http")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.crt", directory / "tls.crt", directory / "tls.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths
