// Command responder is a relgate responder in Go: an example certificate
// authority. It watches the tls-certificates requests addressed to its unit
// and answers each one. When the watch is cut (the gateway restarts, or the
// network fails) it resumes after the last revision it saw, so no request is
// missed and none is seen twice. It prints one JSON line per step.
//
//	responder -target localhost:50051 -unit ca/0 -relation tls-certificates:1
//
// The certificates it returns are placeholder PEM text, not real X.509: the
// example is about talking to relgate.
package main

import (
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"relgate/examples/go/client"
	relgatev1 "relgate/examples/go/gen/relgate/v1"
)

type responder struct {
	options  client.Options
	relation string
	stub     relgatev1.ResponderServiceClient
}

func main() {
	var r responder
	flags := flag.NewFlagSet("responder", flag.ExitOnError)
	r.options.Register(flags)
	flags.StringVar(&r.relation, "relation", "", "relation id; empty means every relation the unit joined as responder")
	afterRevision := flags.Int64("after-revision", -1, "resume after this revision instead of starting from a snapshot")
	_ = flags.Parse(os.Args[1:])

	conn, err := r.options.Dial()
	if err != nil {
		fmt.Fprintln(os.Stderr, "responder:", err)
		os.Exit(2)
	}
	defer conn.Close()
	r.stub = relgatev1.NewResponderServiceClient(conn)
	os.Exit(r.run(*afterRevision))
}

// run watches until a cut that cannot be resumed; -1 means "from a snapshot".
func (r *responder) run(afterRevision int64) int {
	for {
		options := r.watchOptions(afterRevision)
		client.Emit("watching", map[string]any{"start": options.GetStart().String(), "after_revision": client.RevisionOrNil(afterRevision)})
		var err error
		afterRevision, err = r.watch(options, afterRevision)
		if client.StartOver(err) {
			afterRevision = -1
		} else if !client.Resumable(err) {
			client.Emit("failed", client.RichError(err))
			return 1
		}
		client.Emit("cut", map[string]any{"code": client.RichError(err)["code"], "revision": afterRevision})
	}
}

// watchOptions start from a snapshot the first time and after the last revision seen on every resume.
func (r *responder) watchOptions(afterRevision int64) *relgatev1.WatchOptions {
	options := &relgatev1.WatchOptions{
		RelationId: r.relation,
		Filter:     relgatev1.RequestFilter_REQUEST_FILTER_NEW,
		Start:      relgatev1.WatchStart_WATCH_START_SNAPSHOT,
	}
	if afterRevision >= 0 {
		options.Start = relgatev1.WatchStart_WATCH_START_AFTER_REVISION
		options.AfterRevision = afterRevision
	}
	return options
}

// watch answers new requests as they arrive until the stream ends; it
// returns the revision to resume after and why the stream ended.
func (r *responder) watch(options *relgatev1.WatchOptions, afterRevision int64) (int64, error) {
	// A revision is a safe resume point only once a snapshot is complete.
	inSnapshot := options.GetStart() == relgatev1.WatchStart_WATCH_START_SNAPSHOT
	ctx := r.options.Context(context.Background())
	// WaitForReady: while the gateway is down, wait for it instead of failing.
	stream, err := r.stub.WatchIncomingRequests(ctx, &relgatev1.WatchIncomingRequestsRequest{Options: options}, grpc.WaitForReady(true))
	if err != nil {
		return afterRevision, err
	}
	for {
		message, err := stream.Recv()
		if err != nil {
			return afterRevision, err
		}
		for _, event := range message.GetBatch().GetEvents() {
			if event.GetType() == relgatev1.EventType_EVENT_TYPE_SNAPSHOT_COMPLETE {
				inSnapshot = false
				client.Emit("live", map[string]any{"revision": event.GetRevision()})
			} else if request := event.GetRequest(); request != nil && request.GetIsNew() {
				if err := r.answer(ctx, request); err != nil {
					return afterRevision, err // resume before this request's revision, so it comes again
				}
			}
		}
		if !inSnapshot {
			afterRevision = message.GetBatch().GetRevision()
		}
	}
}

// answer responds to one request; only a resumable failure is returned.
func (r *responder) answer(ctx context.Context, request *relgatev1.Request) error {
	fields, err := certificateFields(request)
	if err != nil {
		return err
	}
	reply, err := r.stub.Respond(ctx, &relgatev1.RespondRequest{RequestId: request.GetRequestId(), Fields: fields})
	if client.Resumable(err) {
		return err
	}
	if err != nil {
		// E.g. another unit answered first or the request expired: skip it.
		details := client.RichError(err)
		details["request_id"] = request.GetRequestId()
		client.Emit("not_answered", details)
		return nil
	}
	client.Emit("answered", map[string]any{
		"request_id":       request.GetRequestId(),
		"request_revision": request.GetRevision(),
		"common_name":      request.GetFields().GetFields()["common_name"].GetStringValue(),
		"response":         client.Message(reply.GetResponse()),
	})
	return nil
}

// certificateFields is the tls-certificates response: key, cert and ca for the requested common name.
func certificateFields(request *relgatev1.Request) (*structpb.Struct, error) {
	commonName := request.GetFields().GetFields()["common_name"].GetStringValue()
	return structpb.NewStruct(map[string]any{
		"key":  placeholderPEM("PRIVATE KEY", "key for "+commonName),
		"cert": placeholderPEM("CERTIFICATE", "CN="+commonName+", issued by the relgate example CA"),
		"ca":   placeholderPEM("CERTIFICATE", "CN=relgate example CA"),
	})
}

func placeholderPEM(kind, text string) string {
	return "-----BEGIN " + kind + "-----\n" + base64.StdEncoding.EncodeToString([]byte(text)) + "\n-----END " + kind + "-----\n"
}
