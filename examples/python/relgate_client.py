"""Connecting to relgate from Python with grpcio.

Shared by requester.py and responder.py: command-line options for the
gateway's address and credentials, the channel they make, JSON output, and
reading relgate's rich errors (google.rpc.Status details).
"""

import argparse
import json
import os
import sys

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# Stubs generated from proto/ by grpcio-tools (see docs/clients.md).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))

UNIT_METADATA_KEY = "relgate-unit"

# Retry a lost connection within seconds, so a restarted gateway is found quickly.
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 3000)]


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="localhost:50051", help="gateway address, host:port")
    parser.add_argument("--unit", help=f'unit to act as, sent as "{UNIT_METADATA_KEY}" metadata (open mode)')
    parser.add_argument(
        "--token-file",
        default=os.environ.get("RELGATE_TOKEN_FILE"),
        help="file holding the unit's token from RegisterUnit (authenticated mode; or RELGATE_TOKEN_FILE)",
    )
    parser.add_argument("--ca-cert", help="TLS: PEM certificate of the CA that signed the gateway's certificate")
    parser.add_argument("--client-cert", help="mutual TLS: PEM client certificate (its CN names the unit)")
    parser.add_argument("--client-key", help="mutual TLS: PEM key of the client certificate")


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as file:
        return file.read()


def _token(args: argparse.Namespace) -> str | None:
    raw = _read(args.token_file)
    return raw.decode().strip() if raw is not None else None


def _channel_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS when a CA is given, local (plaintext on loopback) when only a token is, else none."""
    if args.ca_cert:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(args.ca_cert),
            private_key=_read(args.client_key),
            certificate_chain=_read(args.client_cert),
        )
    if args.token_file:
        # grpcio attaches call credentials only to secure or local channels:
        # local credentials speak plaintext and refuse non-loopback peers.
        return grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    return None


def connect(args: argparse.Namespace) -> tuple[grpc.Channel, list[tuple[str, str]]]:
    """A channel to the gateway and the metadata to send with every call.

    A token travels as "authorization: Bearer <token>" through the channel's
    call credentials; a unit name (open mode) travels as relgate-unit metadata.
    """
    channel_credentials = _channel_credentials(args)
    token = _token(args)
    if channel_credentials is None:
        channel = grpc.insecure_channel(args.target, options=CHANNEL_OPTIONS)
    elif token is None:
        channel = grpc.secure_channel(args.target, channel_credentials, options=CHANNEL_OPTIONS)
    else:
        call_credentials = grpc.access_token_call_credentials(token)
        credentials = grpc.composite_channel_credentials(channel_credentials, call_credentials)
        channel = grpc.secure_channel(args.target, credentials, options=CHANNEL_OPTIONS)
    metadata = [(UNIT_METADATA_KEY, args.unit)] if args.unit else []
    return channel, metadata


def to_dict(message: Message) -> dict:
    """A message as JSON-ready data, with the .proto field names."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def emit(event: str, **fields) -> None:
    """Prints one JSON line: what happened, and its data."""
    print(json.dumps({"event": event, **fields}), flush=True)


def rich_error(error: grpc.RpcError) -> dict:
    """The call's status with the google.rpc.Status details relgate sends.

    rpc_status.from_call raises ValueError when the details' code or message
    differ from the call's own status, so a result means they agree.
    """
    code_value, _ = error.code().value
    result = {"code": error.code().name, "code_value": code_value, "message": error.details()}
    status = rpc_status.from_call(error)
    if status is None:
        return result
    result["status"] = {"code": status.code, "message": status.message}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            result["error_info"] = {"reason": info.reason, "domain": info.domain, "metadata": dict(info.metadata)}
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            result["field_violations"] = [
                {"field": violation.field, "description": violation.description} for violation in bad_request.field_violations
            ]
    return result
