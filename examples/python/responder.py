"""A relgate responder in Python: an example certificate authority.

It watches the tls-certificates requests addressed to its unit and answers
each one. When the watch is cut (the gateway restarts, or the network fails)
it resumes after the last revision it saw, so no request is missed and none
is seen twice. It prints one JSON line per step.

    python examples/python/responder.py --target localhost:50051 --unit ca/0 --relation tls-certificates:1

The certificates it returns are placeholder PEM text, not real X.509: the
example is about talking to relgate.
"""

import argparse
import base64
import sys

import grpc
from google.protobuf import struct_pb2

import relgate_client
from relgate_client import emit, rich_error, to_dict
from relgate.v1 import responder_pb2, responder_pb2_grpc, types_pb2, watch_pb2

# Cuts after which the watch resumes: the gateway went away or is restarting,
# or the watcher fell too far behind and was cut off.
RESUMABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
# Cuts after which the watch starts again from a snapshot: the history after
# its revision was compacted away, or (a watch of every relation) its unit
# joined another relation, whose waiting requests only a snapshot brings.
START_OVER = {grpc.StatusCode.OUT_OF_RANGE}


def placeholder_pem(kind: str, text: str) -> str:
    body = base64.b64encode(text.encode()).decode()
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n"


def certificate_fields(request: types_pb2.Request) -> struct_pb2.Struct:
    """The tls-certificates response: key, cert and ca for the requested common name."""
    common_name = request.fields["common_name"]
    fields = struct_pb2.Struct()
    fields.update(
        {
            "key": placeholder_pem("PRIVATE KEY", f"key for {common_name}"),
            "cert": placeholder_pem("CERTIFICATE", f"CN={common_name}, issued by the relgate example CA"),
            "ca": placeholder_pem("CERTIFICATE", "CN=relgate example CA"),
        }
    )
    return fields


class Responder:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        channel, self.metadata = relgate_client.connect(args)
        self.stub = responder_pb2_grpc.ResponderServiceStub(channel)
        # The last revision whose events are all handled; None until known.
        self.after_revision: int | None = args.after_revision

    def watch_options(self) -> watch_pb2.WatchOptions:
        """From a snapshot the first time; after the last revision seen on every resume."""
        if self.after_revision is None:
            start = watch_pb2.WATCH_START_SNAPSHOT
        else:
            start = watch_pb2.WATCH_START_AFTER_REVISION
        return watch_pb2.WatchOptions(
            relation_id=self.args.relation,
            filter=types_pb2.REQUEST_FILTER_NEW,
            start=start,
            after_revision=self.after_revision or 0,
        )

    def run(self) -> int:
        while True:
            options = self.watch_options()
            emit("watching", start=watch_pb2.WatchStart.Name(options.start), after_revision=self.after_revision)
            try:
                self.watch(options)
                emit("cut", code="OK", revision=self.after_revision)
            except grpc.RpcError as error:
                if error.code() in START_OVER:
                    self.after_revision = None
                elif error.code() not in RESUMABLE:
                    emit("failed", **rich_error(error))
                    return 1
                emit("cut", code=error.code().name, revision=self.after_revision)

    def watch(self, options: watch_pb2.WatchOptions) -> None:
        """Answers new requests as they arrive, until the stream ends."""
        # A revision is a safe resume point only once a snapshot is complete.
        in_snapshot = options.start == watch_pb2.WATCH_START_SNAPSHOT
        request = responder_pb2.WatchIncomingRequestsRequest(options=options)
        # wait_for_ready: while the gateway is down, wait for it instead of failing.
        for message in self.stub.WatchIncomingRequests(request, metadata=self.metadata, wait_for_ready=True):
            for event in message.batch.events:
                if event.type == watch_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE:
                    in_snapshot = False
                    emit("live", revision=event.revision)
                elif event.WhichOneof("object") == "request" and event.request.is_new:
                    self.answer(event.request)
            # Every event up to here is handled (a failed answer raised above).
            if not in_snapshot:
                self.after_revision = message.batch.revision

    def answer(self, request: types_pb2.Request) -> None:
        respond = responder_pb2.RespondRequest(request_id=request.request_id, fields=certificate_fields(request))
        try:
            reply = self.stub.Respond(respond, metadata=self.metadata)
        except grpc.RpcError as error:
            if error.code() in RESUMABLE:
                raise  # resume before this request's revision, so it comes again
            # E.g. another unit answered first or the request expired: skip it.
            emit("not_answered", request_id=request.request_id, **rich_error(error))
            return
        emit(
            "answered",
            request_id=request.request_id,
            request_revision=request.revision,
            common_name=request.fields["common_name"],
            response=to_dict(reply.response),
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    relgate_client.add_connection_arguments(parser)
    parser.add_argument("--relation", default="", help="relation id; empty means every relation the unit joined as responder")
    parser.add_argument("--after-revision", type=int, help="resume after this revision instead of starting from a snapshot")
    return Responder(parser.parse_args()).run()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
