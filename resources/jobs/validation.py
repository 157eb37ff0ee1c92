"""Every SageMaker request is checked before it is sent, against everything SageMaker would refuse.

Call :func:`validate_request` on the final body of CreateProcessingJob / CreateTrainingJob, after
the Pipes bootstrap environment and the tags are merged in. It collects every problem and raises
one :class:`InvalidJobRequestError` listing each, with the setting to change (``FORECAST_PREFIX is
too long by 6 characters``), not only the field of the request. It checks:

- botocore's own ParamValidator: types, required members, unknown names;
- every constraint of the SageMaker service model that botocore does not enforce: maximum and
  minimum lengths, patterns, enums, numeric ranges, list and map sizes, walked recursively
  through every shape of the operation (the model is loaded once per process);
- rules SageMaker documents but its model lacks, each cited where it is checked below.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import sys
import unicodedata
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg
from dagster_pipes import decode_param, encode_param

from resources.jobs.requests import step_of_job_name
from resources.jobs.settings import (
    MAX_RUNTIME_SECONDS,
    RESERVED_TAG_PREFIXES,
    kms_key_problem,
)

Operation = Literal["CreateProcessingJob", "CreateTrainingJob"]
OPERATIONS: tuple[Operation, ...] = ("CreateProcessingJob", "CreateTrainingJob")
_NAME_FIELD = {"CreateProcessingJob": "ProcessingJobName", "CreateTrainingJob": "TrainingJobName"}

PROCESSING_PATH_ROOT = "/opt/ml/processing/"
PIPES_ENV_PREFIX = "DAGSTER_PIPES_"
_BUG = "a bug in forecast_assets (no setting causes this)"

# VolumeKmsKeyId and local instance storage. ProcessingClusterConfig.VolumeKmsKeyId and
# ResourceConfig.VolumeKmsKeyId in the SageMaker API reference: "Certain Nitro-based instances
# include local storage, dependent on the instance type. Local storage volumes are encrypted
# using a hardware module on the instance. You can't request a VolumeKmsKeyId when using an
# instance type with local storage. For a list of instance types that support local instance
# storage, see Instance Store Volumes"
# (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instance-store-volumes.html). In EC2's
# instance type names a "d" after the generation means instance store volumes (c5d, m5d, r5d,
# g4dn, p3dn, p4d, p4de, ...: https://docs.aws.amazon.com/ec2/latest/instancetypes/
# instance-type-names.html); the families below have NVMe instance store without a "d"
# (ResourceConfig.VolumeSizeInGB names ml.p4d, ml.g4dn and ml.g5 as NVMe families; the EC2 list
# has the others). tests/test_validation.py lists the families this finds among every instance
# type botocore's model offers, so a botocore upgrade that adds families shows up there.
_INSTANCE_STORE_FAMILIES = frozenset(
    {"g5", "g6", "g6e", "p5", "p5e", "p5en", "p6-b200", "p6-b300", "p6e-gb200"}
    | {"trn1", "trn1n", "trn2"}
)
_D_FAMILY = re.compile(r"[a-z]+\d+[a-z]*d[a-z]*")


def has_instance_storage(instance_type: str) -> bool:
    """Whether ``ml.<family>.<size>`` has local (NVMe) instance storage."""
    parts = instance_type.split(".")
    if len(parts) != 3 or parts[0] != "ml":
        return False
    return parts[1] in _INSTANCE_STORE_FAMILIES or bool(_D_FAMILY.fullmatch(parts[1]))


class InvalidJobRequestError(dg.Failure):
    """SageMaker would refuse a request; nothing was sent. Lists each problem and its setting.

    A Dagster ``Failure`` (a clear description instead of a traceback, and no retry: the same
    settings would fail again), usable as a plain exception outside Dagster too.
    """

    def __init__(self, operation: str, job_name: str, problems: Sequence[str]):
        self.operation = operation
        self.job_name = job_name
        self.problems = list(problems)
        count = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        super().__init__(
            description=f"SageMaker would refuse {operation} for {job_name}, so it was not sent "
            f"({count}):\n" + "\n".join(f"- {p}" for p in self.problems),
            metadata={
                "operation": operation,
                "job_name": job_name,
                "problems": dg.MetadataValue.json(self.problems),
            },
            allow_retries=False,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.operation, self.job_name, self.problems)


def validate_request(operation: Operation, body: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidJobRequestError` if SageMaker would refuse ``body``.

    ``body`` is the final request: Pipes environment and tags merged in.
    """
    problems = request_problems(operation, body)
    if problems:
        name = body.get(_NAME_FIELD[operation]) if isinstance(body, Mapping) else None
        raise InvalidJobRequestError(operation, str(name or "(no name)"), problems)


def request_problems(operation: Operation, body: Mapping[str, Any]) -> list[str]:
    """Every reason SageMaker would refuse ``body``, each naming what to change."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}; expected one of {OPERATIONS}")
    if not isinstance(body, Mapping):
        return [f"the request is a {type(body).__name__}, not a mapping: {_BUG}"]
    ctx = _Context.of(operation, body)
    problems = [_explain_botocore(line, ctx) for line in _botocore_errors(operation, body)]
    problems += [_explain(finding, ctx) for finding in model_findings(operation, body)]
    problems += _documented_rule_problems(ctx)
    return problems


# The service model ---------------------------------------------------------------------------


@functools.cache
def _service_model() -> Any:
    import botocore.session  # loads the model from botocore's data files, no network

    return botocore.session.get_session().get_service_model("sagemaker")


def input_shape(operation: Operation) -> Any:
    """botocore's input shape of ``operation`` (from the cached service model)."""
    return _service_model().operation_model(operation).input_shape


class _MapKey(str):
    """A map key in a path, rendered ``[key]``."""


PathPart = str | int
Path = tuple[PathPart, ...]


def render_path(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int | _MapKey):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "the request"


@dataclass(frozen=True)
class Finding:
    """One constraint of the service model that a value breaks."""

    path: Path
    kind: Literal[
        "enum", "pattern", "max_length", "min_length", "max_items", "min_items", "max", "min"
    ]
    value: Any
    limit: Any
    of_key: bool = False
    """The finding is about a map's key, not its value."""

    def problem(self) -> str:
        """What is wrong, after "<path> is"."""
        if self.kind == "enum":
            return f"{self.value!r}, not one of the {len(self.limit)} values SageMaker accepts"
        if self.kind == "pattern":
            return f"{_short(self.value)!r}, which does not match {self.limit}"
        if self.kind in ("max_length", "min_length"):
            bound = "the limit is" if self.kind == "max_length" else "the minimum is"
            return f"{len(self.value)} characters long, {bound} {self.limit}"
        if self.kind in ("max_items", "min_items"):
            bound = "the limit is" if self.kind == "max_items" else "the minimum is"
            return f"{self.value} entries, {bound} {self.limit}"
        bound = "the maximum is" if self.kind == "max" else "the minimum is"
        return f"{self.value}, {bound} {self.limit}"

    def __str__(self) -> str:
        return f"{render_path(self.path)}{' (its key)' if self.of_key else ''} is {self.problem()}"


def model_findings(operation: Operation, body: Mapping[str, Any]) -> list[Finding]:
    """Every constraint of the service model ``body`` breaks: lengths, patterns, enums, ranges
    and sizes, minimum and maximum.

    botocore's ParamValidator checks only types, required members and minimums; the rest is left
    to the service, which refuses the call.
    """
    return list(_walk(body, input_shape(operation), ()))


def _walk(value: Any, shape: Any, path: Path, of_key: bool = False) -> Iterator[Finding]:
    meta = shape.metadata
    kind = shape.type_name
    if kind == "structure" and isinstance(value, Mapping):
        for name, member in value.items():
            if name in shape.members:  # unknown names are botocore's to report
                yield from _walk(member, shape.members[name], (*path, name))
    elif kind == "list" and isinstance(value, list | tuple):
        yield from _size(len(value), meta, path)
        for i, item in enumerate(value):
            yield from _walk(item, shape.member, (*path, i))
    elif kind == "map" and isinstance(value, Mapping):
        yield from _size(len(value), meta, path)
        for key, item in value.items():
            yield from _walk(key, shape.key, (*path, _MapKey(key)), of_key=True)
            yield from _walk(item, shape.value, (*path, _MapKey(key)))
    elif kind == "string" and isinstance(value, str):
        if shape.enum and value not in shape.enum:
            yield Finding(path, "enum", value, tuple(shape.enum), of_key)
        if "max" in meta and len(value) > meta["max"]:
            yield Finding(path, "max_length", value, meta["max"], of_key)
        if "min" in meta and len(value) < meta["min"]:
            yield Finding(path, "min_length", value, meta["min"], of_key)
        pattern = _python_pattern(meta["pattern"]) if "pattern" in meta else None
        if pattern is not None and not pattern.fullmatch(value):
            yield Finding(path, "pattern", value, meta["pattern"], of_key)
    elif kind in ("integer", "long") and isinstance(value, int) and not isinstance(value, bool):
        if "max" in meta and value > meta["max"]:
            yield Finding(path, "max", value, meta["max"], of_key)
        if "min" in meta and value < meta["min"]:
            yield Finding(path, "min", value, meta["min"], of_key)


def _size(count: int, meta: Mapping[str, Any], path: Path) -> Iterator[Finding]:
    if "max" in meta and count > meta["max"]:
        yield Finding(path, "max_items", count, meta["max"])
    if "min" in meta and count < meta["min"]:
        yield Finding(path, "min_items", count, meta["min"])


# The model's patterns are Java regular expressions (matched whole). Python's re lacks Unicode
# properties such as \p{L} (the tag patterns use \p{L}\p{Z}\p{N}), so those become explicit
# character ranges, and UTF-16 surrogate pairs become the code points they encode. A construct
# re still could not compile would leave its pattern unchecked: tests/test_validation.py checks
# that no pattern of either operation is left.
_PROPERTY = re.compile(r"\\p\{(\w+)\}")
_SURROGATE_PAIR = re.compile(r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.IGNORECASE)
_POSIX = {"Alnum": "a-zA-Z0-9", "Alpha": "a-zA-Z", "Digit": "0-9", "Upper": "A-Z", "Lower": "a-z"}


@functools.cache
def _category_ranges() -> dict[str, list[tuple[int, int]]]:
    """Code point ranges per Unicode general category (``Lu``, ``Nd``, ...)."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    for code in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(code))
        spans = ranges.setdefault(category, [])
        if spans and spans[-1][1] == code - 1:
            spans[-1] = (spans[-1][0], code)
        else:
            spans.append((code, code))
    return ranges


@functools.cache
def _property_class(name: str) -> str:
    """The body of a character class (no brackets) matching Java's ``\\p{name}``."""
    if name in _POSIX:
        return _POSIX[name]
    spans = sorted(
        s for cat, found in _category_ranges().items() if cat.startswith(name) for s in found
    )
    if not spans:
        raise re.error(f"unknown property \\p{{{name}}}")
    return "".join(f"\\U{lo:08x}-\\U{hi:08x}" if hi > lo else f"\\U{lo:08x}" for lo, hi in spans)


@functools.cache
def _python_pattern(java: str) -> re.Pattern[str] | None:
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(java):
        if java[i] == "\\" and i + 1 < len(java):
            if pair := _SURROGATE_PAIR.match(java, i):
                high, low = int(pair.group(1), 16), int(pair.group(2), 16)
                out.append(f"\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08x}")
                i = pair.end()
                continue
            if match := _PROPERTY.match(java, i):
                try:
                    body = _property_class(match.group(1))
                except re.error:
                    return None
                out.append(body if in_class else f"[{body}]")
                i = match.end()
                continue
            out.append(java[i : i + 2])
            i += 2
            continue
        if java[i] == "[":
            in_class = True
        elif java[i] == "]":
            in_class = False
        out.append(java[i])
        i += 1
    try:
        return re.compile("".join(out))
    except re.error:
        return None


def uncheckable_patterns(operation: Operation) -> list[str]:
    """Patterns of the operation's shapes this module cannot check (should be none)."""
    seen: set[str] = set()
    failed: list[str] = []

    def visit(shape: Any) -> None:
        if shape.name in seen:
            return
        seen.add(shape.name)
        pattern = shape.metadata.get("pattern")
        if pattern is not None and _python_pattern(pattern) is None:
            failed.append(f"{shape.name}: {pattern}")
        if shape.type_name == "structure":
            for member in shape.members.values():
                visit(member)
        elif shape.type_name == "list":
            visit(shape.member)
        elif shape.type_name == "map":
            visit(shape.key)
            visit(shape.value)

    visit(input_shape(operation))
    return failed


# botocore's ParamValidator -----------------------------------------------------------------


def _botocore_errors(operation: Operation, body: Mapping[str, Any]) -> list[str]:
    """botocore's report, one line per error, without its minimum checks (the walk reports
    those, naming the setting)."""
    from botocore.validate import ParamValidator

    report = ParamValidator().validate(body, input_shape(operation)).generate_report()
    return [
        line
        for line in report.splitlines()
        if line and not line.startswith(("Invalid length for parameter", "Invalid value for"))
    ]


_BOTOCORE_PATH = re.compile(
    r'^(?:Missing required parameter in (?P<parent>\S+): "(?P<missing>[^"]+)"'
    r'|Unknown parameter in (?P<parent2>\S+): "(?P<unknown>[^"]+)"'
    r"|Invalid type for parameter (?P<param>[^,]+?),)"
)


def _parse_botocore_path(text: str) -> Path:
    if text == "input":
        return ()
    text = re.sub(r" \(key: [^)]*\)$", "", text)
    return tuple(
        int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"\[\d+\]|[^.\[]+", text)
    )


def _explain_botocore(line: str, ctx: _Context) -> str:
    match = _BOTOCORE_PATH.match(line)
    if not match:
        return f"botocore: {line}: {_BUG}"
    if match["param"]:
        path = _parse_botocore_path(match["param"])
    else:
        parent = _parse_botocore_path(match["parent"] or match["parent2"])
        path = (*parent, match["missing"] or match["unknown"])
    return f"{ctx.setting_for(path)}: botocore: {line}"


# Explaining a finding with the setting behind it ---------------------------------------------


@dataclass(frozen=True)
class _Context:
    operation: Operation
    body: Mapping[str, Any]
    step: str | None
    prefix: str | None
    """FORECAST_PREFIX as the body shows it (None if it does not)."""

    @classmethod
    def of(cls, operation: Operation, body: Mapping[str, Any]) -> _Context:
        name = body.get(_NAME_FIELD[operation])
        step = step_of_job_name(name) if isinstance(name, str) else None
        if operation == "CreateTrainingJob":
            step = "training"
        return cls(operation, body, step, _deployment(body)[1])

    @property
    def kind(self) -> str:
        return "training" if self.operation == "CreateTrainingJob" else "processing"

    def var(self, suffix: str) -> str:
        return f"FORECAST_{(self.step or '<JOB>').upper()}_{suffix}"

    def setting_for(self, path: Path) -> str:
        """The setting behind ``path``, or why no setting is."""
        names = [p for p in path if isinstance(p, str)]
        top, last = (names[0], names[-1]) if names else ("", "")
        if "VpcConfig" in names:
            return "FORECAST_SUBNETS" if "Subnets" in names else "FORECAST_SECURITY_GROUP_IDS"
        if top == "Tags":
            return "FORECAST_TAGS"
        if _is_s3(path) or (top == "Environment" and last.startswith(PIPES_ENV_PREFIX)):
            return "FORECAST_BUCKET / FORECAST_PREFIX"
        by_field = {
            "InstanceType": self.var("INSTANCE_TYPE"),
            "InstanceCount": self.var("INSTANCE_COUNT"),
            "VolumeSizeInGB": self.var("VOLUME_SIZE_GB"),
            "VolumeKmsKeyId": "FORECAST_KMS_KEY_ID",
            "KmsKeyId": "FORECAST_KMS_KEY_ID",
            "MaxRuntimeInSeconds": self.var("MAX_RUNTIME_SECONDS"),
            "MaxWaitTimeInSeconds": "FORECAST_TRAINING_SPOT_MAX_WAIT_SECONDS",
            "RoleArn": "FORECAST_SAGEMAKER_ROLE_ARN",
            "ImageUri": self.var("IMAGE_URI"),
            "TrainingImage": self.var("IMAGE_URI"),
        }
        if last in by_field and top != "DebugRuleConfigurations":
            return by_field[last]
        if last in _NAME_FIELD.values():
            return (
                "the job name (made from the step, the customer id or batch size, the run and "
                f"the attempt): {_BUG}"
            )
        if top == "HyperParameters":
            return "the hyperparameters (models/load_forecast_model's config)"
        return _BUG


def _is_s3(path: Path) -> bool:
    names = [p for p in path if isinstance(p, str)]
    if not names:
        return False
    return names[-1] in ("S3Uri", "S3OutputPath") or (
        names[0] == "HyperParameters" and names[-1] == "sagemaker_submit_directory"
    )


def _explain(finding: Finding, ctx: _Context) -> str:
    path, where = finding.path, render_path(finding.path)
    names = [p for p in path if isinstance(p, str)]
    top, last = (names[0], names[-1]) if names else ("", "")
    if finding.kind == "max_length" and not finding.of_key and _is_s3(path):
        return f"{_s3_too_long(finding.value, finding.limit, ctx)} [{where}]"
    if (
        finding.kind == "max_length"
        and not finding.of_key
        and top == "Environment"
        and last.startswith(PIPES_ENV_PREFIX)
    ):
        return f"{_pipes_too_long(last, finding.value, finding.limit, ctx)} [{where}]"
    if top == "Tags":
        return f"{_tag_problem(finding, ctx)} [{where}]"
    if finding.kind == "enum" and last == "InstanceType":
        close = difflib.get_close_matches(finding.value, finding.limit, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return (
            f"{ctx.setting_for(path)} is {finding.value!r}, which SageMaker does not offer for "
            f"{ctx.kind} jobs{hint} [{where}]"
        )
    if finding.kind == "pattern" and _is_s3(path):
        return (
            f"FORECAST_BUCKET: {_short(finding.value)!r} is not an s3://<bucket>/<key> URI "
            f"[{where}]"
        )
    return f"{ctx.setting_for(path)}: {finding}"


def _short(text: Any, most: int = 80) -> str:
    text = str(text)
    return text if len(text) <= most else f"{text[: most - 1]}…"


def _middle(text: str, head: int = 40, tail: int = 30) -> str:
    """``text`` without its middle, if long: where a URI starts and ends."""
    return text if len(text) <= head + tail + 1 else f"{text[:head]}…{text[-tail:]}"


def _s3_too_long(uri: str, limit: int, ctx: _Context) -> str:
    over = len(uri) - limit
    head = (
        f"FORECAST_BUCKET + FORECAST_PREFIX make {_middle(uri)} {len(uri)} characters, "
        f"the limit is {limit}"
    )
    if ctx.prefix is None or over <= len(ctx.prefix):
        return f"{head}: FORECAST_PREFIX is too long by {over} characters"
    return f"{head}: even an empty FORECAST_PREFIX leaves {over - len(ctx.prefix)} too many: {_BUG}"


def _pipes_too_long(var: str, value: str, limit: int, ctx: _Context) -> str:
    head = (
        f"FORECAST_BUCKET + FORECAST_PREFIX make the Pipes parameter {var} (bucket and key, "
        f"compressed) {len(value)} characters, the limit is {limit}"
    )
    cut = _prefix_cut(value, limit, ctx.prefix) if ctx.prefix else None
    if cut is not None:
        return f"{head}: FORECAST_PREFIX is too long by {cut} characters"
    if ctx.prefix:
        return (
            f"{head}: even an empty FORECAST_PREFIX would not fit it, so the Pipes keys are too "
            f"long: {_BUG}"
        )
    return f"{head}: the Pipes keys are too long for this bucket: {_BUG}"


def _prefix_cut(value: str, limit: int, prefix: str) -> int | None:
    """How many characters FORECAST_PREFIX must lose for the Pipes parameter to fit."""
    params = _decode(value)
    if params is None:
        return None
    for cut in range(1, len(prefix) + 1):
        shorter = prefix[: len(prefix) - cut].rstrip("/")
        params_cut = {
            k: (_replace_prefix(v, prefix, shorter) if k in ("key", "key_prefix") else v)
            for k, v in params.items()
        }
        if len(encode_param(params_cut)) <= limit:
            return cut
    return None


def _replace_prefix(key: Any, prefix: str, shorter: str) -> Any:
    if not isinstance(key, str) or not key.startswith(f"{prefix}/"):
        return key
    rest = key[len(prefix) + 1 :]
    return f"{shorter}/{rest}" if shorter else rest


def _decode(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, str):
        return None
    try:
        params = decode_param(value)
    except (ValueError, TypeError, zlib.error):
        return None
    return params if isinstance(params, dict) else None


def _deployment(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """FORECAST_BUCKET and FORECAST_PREFIX as the body shows them.

    The Pipes parameters name the bucket and a key under ``<prefix>/pipes/``; without them, the
    prefix is what the body's S3 URIs have in common (every job reads and writes more than one
    folder under it).
    """
    environment = body.get("Environment")
    if isinstance(environment, Mapping):
        for var in ("DAGSTER_PIPES_MESSAGES", "DAGSTER_PIPES_CONTEXT"):
            params = _decode(environment.get(var))
            if params is None or not isinstance(params.get("bucket"), str):
                continue
            key = params.get("key_prefix") or params.get("key")
            segments = key.split("/") if isinstance(key, str) else []
            if "pipes" in segments:
                at = len(segments) - 1 - segments[::-1].index("pipes")
                return params["bucket"], "/".join(segments[:at])
    uris = [v for p, v in _leaves(body, ()) if _is_s3(p) and isinstance(v, str)]
    uris = [_unquote(u) for u in uris]
    split = [u[len("s3://") :].split("/") for u in uris if u.startswith("s3://")]
    if len(split) < 2 or len({s[0] for s in split}) != 1:
        return (split[0][0] if split else None), None
    common: list[str] = []
    for parts in zip(*(s[1:-1] for s in split), strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return split[0][0], "/".join(common)


def _unquote(text: str) -> str:
    """A hyperparameter's JSON-encoded string, decoded."""
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    return decoded if isinstance(decoded, str) else text


def _leaves(value: Any, path: Path) -> Iterator[tuple[Path, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            part = _MapKey(key) if path and path[0] in ("HyperParameters", "Environment") else key
            yield from _leaves(item, (*path, part))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _leaves(item, (*path, i))
    else:
        yield path, value


# Tags ------------------------------------------------------------------------------------------


def _tags(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    tags = body.get("Tags")
    return [t for t in tags if isinstance(t, Mapping)] if isinstance(tags, list) else []


def _ours(key: Any) -> bool:
    return isinstance(key, str) and key.startswith(RESERVED_TAG_PREFIXES)


def _tag_problem(finding: Finding, ctx: _Context) -> str:
    tags = _tags(ctx.body)
    if finding.path == ("Tags",) and finding.kind == "max_items":
        ours = sum(_ours(t.get("Key")) for t in tags)
        return (
            f"FORECAST_TAGS: the job would carry {finding.value} tags, SageMaker takes "
            f"{finding.limit}: FORECAST_TAGS brings {finding.value - ours} and every job carries "
            f"{ours} of its own, so remove {finding.value - finding.limit} from FORECAST_TAGS"
        )
    index = finding.path[1] if len(finding.path) > 1 else None
    key = tags[index].get("Key") if isinstance(index, int) and index < len(tags) else None
    which = f"the tag {_short(key, 40)!r}" if key is not None else "a tag"
    part = "key" if finding.path[-1] == "Key" else "value"
    return f"{_tag_lead(key)}: the {part} of {which} is {finding.problem()}"


def _tag_lead(key: Any) -> str:
    """Who is to change a tag: FORECAST_TAGS, or forecast_assets for the tags it sets."""
    return f"{_BUG}, a tag it sets" if _ours(key) else "FORECAST_TAGS"


# Rules the model lacks -------------------------------------------------------------------------


def _documented_rule_problems(ctx: _Context) -> list[str]:
    problems = _tag_rule_problems(ctx)
    problems += _kms_problems(ctx)
    if ctx.operation == "CreateProcessingJob":
        problems += _processing_path_problems(ctx.body)
    else:
        problems += _training_problems(ctx)
    return problems


def _tag_rule_problems(ctx: _Context) -> list[str]:
    # "Tag keys must be unique per resource" (Tag.Key in the SageMaker API reference); "aws:" is
    # reserved for AWS, in any case, on keys and values ("Tag naming limits and requirements",
    # Tagging AWS resources, AWS General Reference).
    problems: list[str] = []
    seen: set[str] = set()
    for i, tag in enumerate(_tags(ctx.body)):
        key, value = tag.get("Key"), tag.get("Value")
        if isinstance(key, str):
            if key in seen:
                problems.append(f"{_tag_lead(key)}: the tag key {key!r} appears twice [Tags[{i}]]")
            seen.add(key)
        for part, text in (("key", key), ("value", value)):
            if isinstance(text, str) and text.lower().startswith("aws:"):
                problems.append(
                    f"{_tag_lead(key)}: the {part} {_short(text, 40)!r} starts with 'aws:', which "
                    f"AWS reserves for its own tags [Tags[{i}]]"
                )
    return problems


def _kms_problems(ctx: _Context) -> list[str]:
    if ctx.operation == "CreateProcessingJob":
        path: Path = ("ProcessingResources", "ClusterConfig")
    else:
        path = ("ResourceConfig",)
    config = _get(ctx.body, path)
    if not isinstance(config, Mapping) or not config.get("VolumeKmsKeyId"):
        return []
    key, instance_type = config["VolumeKmsKeyId"], config.get("InstanceType")
    where = render_path((*path, "VolumeKmsKeyId"))
    problems = []
    # VolumeKmsKeyId: "a KMS key ID or the ARN of a KMS key" (ResourceConfig.VolumeKmsKeyId in
    # the SageMaker API reference lists exactly these two formats), unlike the output KmsKeyId,
    # which also takes an alias.
    if isinstance(key, str) and (problem := kms_key_problem(key)):
        problems.append(f"FORECAST_KMS_KEY_ID: {problem} [{where}]")
    if isinstance(instance_type, str) and has_instance_storage(instance_type):
        problems.append(
            f"FORECAST_KMS_KEY_ID is set, but {instance_type} ({ctx.var('INSTANCE_TYPE')}) has "
            "local NVMe instance storage, which the instance encrypts itself: SageMaker refuses "
            "a VolumeKmsKeyId for it. Choose an instance type without instance storage, or "
            f"leave FORECAST_KMS_KEY_ID empty [{where}]"
        )
    return problems


def _processing_path_problems(body: Mapping[str, Any]) -> list[str]:
    # "For both ProcessingInput and ProcessingOutput, the path in the processing container must
    # begin with /opt/ml/processing/" (SageMaker developer guide, "How Amazon SageMaker Processing
    # Configures Input and Output For Your Processing Container"). Each path must be distinct:
    # SageMaker refuses two inputs with one destination, and an input and an output on the same
    # path (ValidationExceptions reported in aws/sagemaker-python-sdk issues 4939 and 1950).
    # Input and output names identify each in DescribeProcessingJob and must be unique.
    problems: list[str] = []
    paths: dict[str, str] = {}
    inputs = body.get("ProcessingInputs") or []
    outputs = _get(body, ("ProcessingOutputConfig", "Outputs")) or []
    entries: list[tuple[str, Path, Any]] = []
    for i, item in enumerate(inputs if isinstance(inputs, list) else []):
        for source in ("S3Input", "DatasetDefinition"):
            local = _get(item, (source, "LocalPath"))
            if local is not None:
                entries.append(("input", ("ProcessingInputs", i, source, "LocalPath"), local))
    for i, item in enumerate(outputs if isinstance(outputs, list) else []):
        local = _get(item, ("S3Output", "LocalPath"))
        if local is not None:
            at: Path = ("ProcessingOutputConfig", "Outputs", i, "S3Output", "LocalPath")
            entries.append(("output", at, local))
    for what, at, local in entries:
        where = render_path(at)
        if not isinstance(local, str):
            continue
        if not local.startswith(PROCESSING_PATH_ROOT):
            problems.append(
                f"the {what} path {local!r} is not under {PROCESSING_PATH_ROOT}: {_BUG} [{where}]"
            )
        normalized = local.rstrip("/")
        if normalized in paths:
            problems.append(
                f"the {what} path {local!r} is also {paths[normalized]}: {_BUG} [{where}]"
            )
        paths.setdefault(normalized, where)
    problems += _duplicate_names(inputs, "InputName", "ProcessingInputs")
    problems += _duplicate_names(outputs, "OutputName", "ProcessingOutputConfig.Outputs")
    return problems


def _training_problems(ctx: _Context) -> list[str]:
    body = ctx.body
    problems = _duplicate_names(body.get("InputDataConfig") or [], "ChannelName", "InputDataConfig")
    stopping = body.get("StoppingCondition")
    if not isinstance(stopping, Mapping):
        return problems
    runtime, wait = stopping.get("MaxRuntimeInSeconds"), stopping.get("MaxWaitTimeInSeconds")
    # StoppingCondition.MaxRuntimeInSeconds: "The maximum value is 28 days" (the model has no
    # maximum for training).
    cap = MAX_RUNTIME_SECONDS["training"]
    if isinstance(runtime, int) and runtime > cap:
        problems.append(
            f"{ctx.var('MAX_RUNTIME_SECONDS')}: {runtime} s (per customer, times the batch) is "
            f"more than SageMaker's 28 days ({cap} s) [StoppingCondition.MaxRuntimeInSeconds]"
        )
    # MaxWaitTimeInSeconds: "It must be equal to or greater than MaxRuntimeInSeconds", and it is
    # what managed spot training waits for.
    if body.get("EnableManagedSpotTraining"):
        if not isinstance(wait, int):
            problems.append(
                "managed spot training without MaxWaitTimeInSeconds: "
                f"{_BUG} [StoppingCondition.MaxWaitTimeInSeconds]"
            )
        elif isinstance(runtime, int) and wait < runtime:
            problems.append(
                f"FORECAST_TRAINING_SPOT_MAX_WAIT_SECONDS: MaxWaitTimeInSeconds {wait} is less than "
                f"MaxRuntimeInSeconds {runtime} ({ctx.var('MAX_RUNTIME_SECONDS')}); SageMaker "
                "needs at least as long [StoppingCondition.MaxWaitTimeInSeconds]"
            )
    return problems


def _duplicate_names(items: Any, field: str, where: str) -> list[str]:
    seen: set[str] = set()
    problems = []
    for i, item in enumerate(items if isinstance(items, list) else []):
        name = item.get(field) if isinstance(item, Mapping) else None
        if isinstance(name, str):
            if name in seen:
                problems.append(f"the {field} {name!r} appears twice: {_BUG} [{where}[{i}]]")
            seen.add(name)
    return problems


def _get(value: Any, path: Path) -> Any:
    for part in path:
        if isinstance(part, int):
            value = value[part] if isinstance(value, list) and part < len(value) else None
        else:
            value = value.get(part) if isinstance(value, Mapping) else None
    return value
