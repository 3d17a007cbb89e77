"""The one table from core errors to gRPC codes, and how a call is aborted with it."""

from __future__ import annotations

import ast
import asyncio
import inspect
import logging
import pathlib
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2 as ed, status_pb2

from fenliu.server.core import errors
from fenliu.server.rpc import status


class _Aborted(Exception):
    """What the fake context raises from abort, as grpc's AbortError would."""


class FakeContext:
    """Records the one abort a servicer makes."""

    def __init__(self) -> None:
        self.aborted: tuple[Any, ...] | None = None

    async def abort(self, code: grpc.StatusCode, details: str, metadata: Any) -> None:
        self.aborted = (code, details, tuple(metadata))
        raise _Aborted


def _run_in_abort_on_error(exc: BaseException) -> FakeContext:
    context = FakeContext()

    async def body() -> None:
        async with status.abort_on_error(context):  # type: ignore[arg-type]
            raise exc

    with pytest.raises((_Aborted, type(exc))):
        asyncio.run(body())
    return context


class _Unlisted(errors.NotFound):
    """A subclass the table does not name: its nearest listed base decides."""


@pytest.mark.parametrize(
    ("error", "code"),
    [
        pytest.param(errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, id="invalid"),
        pytest.param(errors.NotFound, grpc.StatusCode.NOT_FOUND, id="not-found"),
        pytest.param(
            errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, id="precondition"
        ),
        pytest.param(errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, id="exhausted"),
        pytest.param(errors.Unavailable, grpc.StatusCode.UNAVAILABLE, id="unavailable"),
        pytest.param(_Unlisted, grpc.StatusCode.NOT_FOUND, id="subclass-takes-nearest-base"),
    ],
)
def test_core_error_code(error: type[errors.FenliuError], code: grpc.StatusCode) -> None:
    exc = error("shop_id: no shop 'x'", "shop_id")
    assert status.code_for(exc) is code
    assert status.failure(exc)[:3] == (code, "shop_id: no shop 'x'", "shop_id")


def test_every_core_error_has_a_code() -> None:
    classes = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.FenliuError) and cls is not errors.FenliuError
    ]
    assert classes, "no core errors found"
    for cls in classes:
        assert status.code_for(cls("message", "field")) is not None, cls.__name__


def test_unexpected_error_is_internal_logged_and_hides_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger=status.__name__):
        failure = status.failure(KeyError("secret internals"))
    assert failure == (grpc.StatusCode.INTERNAL, status.INTERNAL_MESSAGE, "", ())
    assert "secret" not in failure.message
    [record] = caplog.records
    assert record.exc_info is not None and "secret internals" in caplog.text


def test_bare_base_error_is_not_guessed() -> None:
    failure = status.failure(errors.FenliuError("what", "field"))
    assert failure.code is grpc.StatusCode.INTERNAL


def test_error_message_for_batch_items() -> None:
    error = status.error_message(errors.InvalidArgument("crowds holds 11 items", "crowds"))
    assert (error.code, error.message, error.field) == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "crowds holds 11 items",
        "crowds",
    )
    info, bad_request = error.details
    assert info.Is(ed.ErrorInfo.DESCRIPTOR) and bad_request.Is(ed.BadRequest.DESCRIPTOR)


def test_abort_on_error_aborts_with_code_message_field_and_rich_status() -> None:
    exc = errors.FailedPrecondition(
        "agent is OFFLINE", "agent_id", reason="AGENT_OFFLINE", subject="shops/s/agents/a"
    )
    context = _run_in_abort_on_error(exc)
    assert context.aborted is not None
    code, message, metadata = context.aborted
    assert (code, message) == (grpc.StatusCode.FAILED_PRECONDITION, "agent is OFFLINE")
    assert metadata[0] == (status.FIELD_KEY, "agent_id")
    [(key, raw)] = metadata[1:]
    assert key == "grpc-status-details-bin"
    rich = status_pb2.Status.FromString(raw)
    assert (rich.code, rich.message) == (grpc.StatusCode.FAILED_PRECONDITION.value[0], message)
    info, failure = ed.ErrorInfo(), ed.PreconditionFailure()
    assert rich.details[0].Unpack(info) and rich.details[1].Unpack(failure)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "AGENT_OFFLINE",
        "fenliu",
        {"field": "agent_id", "subject": "shops/s/agents/a"},
    )
    [violation] = failure.violations
    assert (violation.type, violation.subject, violation.description) == (
        "AGENT_OFFLINE",
        "shops/s/agents/a",
        "agent is OFFLINE",
    )


def test_abort_on_error_sends_no_field_when_there_is_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.CRITICAL):
        context = _run_in_abort_on_error(ZeroDivisionError("boom"))
    assert context.aborted == (grpc.StatusCode.INTERNAL, status.INTERNAL_MESSAGE, ())


def test_abort_on_error_lets_cancellation_through() -> None:
    context = _run_in_abort_on_error(asyncio.CancelledError())
    assert context.aborted is None


def test_abort_on_error_does_nothing_on_success() -> None:
    context = FakeContext()

    async def body() -> int:
        async with status.abort_on_error(context):  # type: ignore[arg-type]
            return 7

    assert asyncio.run(body()) == 7
    assert context.aborted is None


def _core_error_classes() -> list[type[errors.FenliuError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.FenliuError) and cls is not errors.FenliuError
    ]


def test_every_core_error_gets_error_info_and_the_details_of_its_code() -> None:
    classes = _core_error_classes()
    assert set(classes) == set(status.CODES) == set(status.DETAILS)
    for cls in classes:
        exc = cls("what went wrong", "agent_id", subject="shops/s/agents/a")
        info, *more = status.failure(exc).details
        assert isinstance(info, ed.ErrorInfo), cls.__name__
        assert (info.reason, info.domain) == (cls.default_reason, "fenliu"), cls.__name__
        assert info.reason.isupper() and " " not in info.reason, cls.__name__
        assert [type(m) for m in more] == EXPECTED_DETAIL_TYPES[status.CODES[cls]], cls.__name__


EXPECTED_DETAIL_TYPES: dict[grpc.StatusCode, list[type[Message]]] = {
    grpc.StatusCode.INVALID_ARGUMENT: [ed.BadRequest],
    grpc.StatusCode.NOT_FOUND: [ed.ResourceInfo],
    grpc.StatusCode.ALREADY_EXISTS: [ed.ResourceInfo],
    grpc.StatusCode.FAILED_PRECONDITION: [ed.PreconditionFailure],
    grpc.StatusCode.RESOURCE_EXHAUSTED: [ed.QuotaFailure],
    grpc.StatusCode.UNAVAILABLE: [],
}


@pytest.mark.parametrize(
    ("subject", "resource"),
    [
        pytest.param("shops/s1", ("shop", "shops/s1", ""), id="shop"),
        pytest.param("shops/s1/agents/a1", ("agent", "shops/s1/agents/a1", "shops/s1"), id="agent"),
        pytest.param(
            "shops/s1/sessions/s7", ("session", "shops/s1/sessions/s7", "shops/s1"), id="session"
        ),
        pytest.param("shops/s1/buyers/b", ("buyer", "shops/s1/buyers/b", "shops/s1"), id="buyer"),
        pytest.param("", ("", "", ""), id="no-subject-no-guess"),
    ],
)
def test_not_found_names_the_resource(subject: str, resource: tuple[str, str, str]) -> None:
    _, info = status.failure(errors.NotFound("gone", "x", subject=subject)).details
    assert isinstance(info, ed.ResourceInfo)
    assert (info.resource_type, info.resource_name, info.owner, info.description) == (
        *resource,
        "gone",
    )


def test_internal_errors_carry_no_details(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.CRITICAL):
        failed = status.failure(KeyError("secret"))
    assert failed.details == ()
    assert status.trailing_metadata(failed) == ()


def test_every_core_refusal_names_its_reason_and_subject() -> None:
    """Each ``raise NotFound/FailedPrecondition/ResourceExhausted(...)`` in the core sets
    ``reason=`` and ``subject=``, so its details say which rule and which resource."""
    core = pathlib.Path(errors.__file__).parent
    stateful = {"NotFound", "FailedPrecondition", "ResourceExhausted"}
    raises = []
    for path in sorted(core.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            call = node.exc
            if isinstance(call.func, ast.Name) and call.func.id in stateful:
                keywords = {k.arg for k in call.keywords}
                raises.append((f"{path.name}:{node.lineno}", keywords >= {"reason", "subject"}))
    assert len(raises) >= 15, raises  # the scan found them
    assert [where for where, named in raises if not named] == []
