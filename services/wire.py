"""gRPC plumbing shared by pli's services: handlers, errors, bad bytes.

grpcio's generated registration turns a request it cannot parse into an
opaque INTERNAL error. pli registers its services from their descriptors
instead, with a parser that reports a malformed request, such as a name
that is not valid UTF-8, as INVALID_ARGUMENT naming the field. Every error
leaves through :func:`abort`, which attaches ``google.rpc`` details.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "BadRequestBytes",
    "abort",
    "abort_invalid",
    "find_invalid_utf8",
    "generic_handler",
]

_DOMAIN = "pli.v1"


@dataclass(frozen=True)
class BadRequestBytes:
    """Stands in for a request that could not be parsed."""

    problems: list[tuple[str, str]]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise IndexError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def find_invalid_utf8(
    descriptor: Descriptor, data: bytes, prefix: str = ""
) -> list[str]:
    """Name every string field holding bytes that are not UTF-8."""
    pos = 0
    seen: dict[int, int] = {}
    found: list[str] = []
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                _, pos = _varint(data, pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            elif wire_type == 2:
                length, pos = _varint(data, pos)
                chunk, pos = data[pos : pos + length], pos + length
                found += _check_field(descriptor, number, chunk, prefix, seen)
            else:
                return found
    except IndexError:
        return found
    return found


def _check_field(
    descriptor: Descriptor,
    number: int,
    chunk: bytes,
    prefix: str,
    seen: dict[int, int],
) -> list[str]:
    field = descriptor.fields_by_number.get(number)
    if field is None:
        return []
    name = prefix + field.name
    if field.is_repeated:
        index = seen.get(number, 0)
        seen[number] = index + 1
        name = f"{name}[{index}]"
    if field.type == FieldDescriptor.TYPE_STRING:
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError:
            return [name]
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        return find_invalid_utf8(field.message_type, chunk, name + ".")
    return []


def _lenient_parser(message_class: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError:
            fields = find_invalid_utf8(message_class.DESCRIPTOR, data)
            if fields:
                return BadRequestBytes([(f, "must be valid UTF-8") for f in fields])
            return BadRequestBytes([("request", "is not a valid protobuf message")])

    return parse


def generic_handler(
    service: ServiceDescriptor, servicer: object
) -> grpc.GenericRpcHandler:
    """Register ``servicer``'s methods for ``service`` with lenient parsing."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        implementation = getattr(servicer, method.name)
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            _refusing_bad_bytes(implementation),
            request_deserializer=_lenient_parser(request_class),
            response_serializer=response_class.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _refusing_bad_bytes(implementation: Callable[..., Any]) -> Callable[..., Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, BadRequestBytes):
            abort_invalid(context, request.problems)
        return implementation(request, context)

    return handle


def abort(
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    details: list[Any] | None = None,
) -> NoReturn:
    """End the call with ``code``, a message and ``google.rpc`` details."""
    packed = []
    for detail in details or []:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=message, details=packed
    )
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")


def abort_invalid(
    context: grpc.ServicerContext, problems: list[tuple[str, str]]
) -> NoReturn:
    """End the call with INVALID_ARGUMENT and one field violation per problem."""
    request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
            for f, d in problems
        ]
    )
    message = "; ".join(f"{f}: {d}" for f, d in problems)
    abort(context, grpc.StatusCode.INVALID_ARGUMENT, message, [request])


def precondition(rule: str, subject: str, description: str) -> Any:
    """A ``google.rpc.PreconditionFailure`` naming the broken rule."""
    return error_details_pb2.PreconditionFailure(
        violations=[
            error_details_pb2.PreconditionFailure.Violation(
                type=rule, subject=subject, description=description
            )
        ]
    )


def error_info(reason: str, **metadata: str) -> Any:
    """A ``google.rpc.ErrorInfo`` in pli's domain."""
    return error_details_pb2.ErrorInfo(reason=reason, domain=_DOMAIN, metadata=metadata)
