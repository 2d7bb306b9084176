// Package client connects the Go examples to relgate: command-line flags for
// the gateway's address and credentials, the connection they make, JSON
// output, and reading relgate's rich errors (google.rpc.Status details).
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/credentials/local"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// UnitMetadataKey names the calling unit in open mode.
const UnitMetadataKey = "relgate-unit"

// Options are where the gateway is and who the client is.
type Options struct {
	Target     string
	Unit       string
	TokenFile  string
	CACert     string
	ClientCert string
	ClientKey  string
}

// Register adds the connection flags to a flag set.
func (o *Options) Register(flags *flag.FlagSet) {
	flags.StringVar(&o.Target, "target", "localhost:50051", "gateway address, host:port")
	flags.StringVar(&o.Unit, "unit", "", `unit to act as, sent as "`+UnitMetadataKey+`" metadata (open mode)`)
	flags.StringVar(&o.TokenFile, "token-file", os.Getenv("RELGATE_TOKEN_FILE"), "file holding the unit's token from RegisterUnit (authenticated mode; or RELGATE_TOKEN_FILE)")
	flags.StringVar(&o.CACert, "ca-cert", "", "TLS: PEM certificate of the CA that signed the gateway's certificate")
	flags.StringVar(&o.ClientCert, "client-cert", "", "mutual TLS: PEM client certificate (its CN names the unit)")
	flags.StringVar(&o.ClientKey, "client-key", "", "mutual TLS: PEM key of the client certificate")
}

// bearerToken sends "authorization: Bearer <token>" with every call.
type bearerToken struct {
	token      string
	requireTLS bool
}

func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity is false only on local (loopback) plaintext connections.
func (b bearerToken) RequireTransportSecurity() bool { return b.requireTLS }

// Dial makes a client connection with the options' credentials: TLS when a
// CA is given, local credentials (plaintext, loopback peers only) when only
// a token is, else plaintext.
func (o *Options) Dial() (*grpc.ClientConn, error) {
	transport, err := o.transportCredentials()
	if err != nil {
		return nil, err
	}
	dialOptions := []grpc.DialOption{
		grpc.WithTransportCredentials(transport),
		// Retry a lost connection within seconds, so a restarted gateway is found quickly.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
	if o.TokenFile != "" {
		raw, err := os.ReadFile(o.TokenFile)
		if err != nil {
			return nil, err
		}
		token := bearerToken{token: strings.TrimSpace(string(raw)), requireTLS: o.CACert != ""}
		dialOptions = append(dialOptions, grpc.WithPerRPCCredentials(token))
	}
	return grpc.NewClient(o.Target, dialOptions...)
}

func (o *Options) transportCredentials() (credentials.TransportCredentials, error) {
	if o.CACert == "" {
		if o.TokenFile != "" {
			return local.NewCredentials(), nil
		}
		return insecure.NewCredentials(), nil
	}
	pem, err := os.ReadFile(o.CACert)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificate in %s", o.CACert)
	}
	config := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if o.ClientCert != "" {
		pair, err := tls.LoadX509KeyPair(o.ClientCert, o.ClientKey)
		if err != nil {
			return nil, err
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return credentials.NewTLS(config), nil
}

// Context carries the calling unit's name as metadata, when one is given.
func (o *Options) Context(parent context.Context) context.Context {
	if o.Unit == "" {
		return parent
	}
	return metadata.AppendToOutgoingContext(parent, UnitMetadataKey, o.Unit)
}

// Message is a protobuf message as JSON with the .proto field names.
func Message(m proto.Message) json.RawMessage {
	out, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		panic(err) // only for messages that cannot be represented in JSON
	}
	return out
}

// Emit prints one JSON line: what happened, and its data.
func Emit(event string, fields map[string]any) {
	line := map[string]any{"event": event}
	for key, value := range fields {
		line[key] = value
	}
	out, err := json.Marshal(line)
	if err != nil {
		panic(err)
	}
	fmt.Println(string(out))
}

// RichError is a failed call's status with the details relgate sends:
// ErrorInfo (reason, domain, metadata) and BadRequest (field violations).
func RichError(err error) map[string]any {
	st, ok := status.FromError(err)
	if !ok {
		return map[string]any{"code": "Unknown", "message": err.Error()}
	}
	result := map[string]any{"code": st.Code().String(), "code_value": int(st.Code()), "message": st.Message()}
	for _, detail := range st.Details() {
		switch detail := detail.(type) {
		case *errdetails.ErrorInfo:
			result["error_info"] = map[string]any{"reason": detail.GetReason(), "domain": detail.GetDomain(), "metadata": detail.GetMetadata()}
		case *errdetails.BadRequest:
			violations := []map[string]string{}
			for _, violation := range detail.GetFieldViolations() {
				violations = append(violations, map[string]string{"field": violation.GetField(), "description": violation.GetDescription()})
			}
			result["field_violations"] = violations
		case error:
			result["undecoded_detail"] = detail.Error()
		}
	}
	return result
}

// Resumable says whether a watch cut by err should resume: the gateway went
// away or is restarting, or the watcher fell too far behind and was cut off.
func Resumable(err error) bool {
	code := status.Code(err)
	return code == codes.Unavailable || code == codes.ResourceExhausted
}

// StartOver says whether a watch cut by err should start again from a
// snapshot: the history after its revision was compacted away, or (a watch of
// every relation) its unit joined another relation, whose waiting requests
// only a snapshot brings.
func StartOver(err error) bool {
	return status.Code(err) == codes.OutOfRange
}

// RevisionOrNil is a watch's resume point for output: nil before the first
// revision is known (-1, a watch from a snapshot).
func RevisionOrNil(revision int64) any {
	if revision < 0 {
		return nil
	}
	return revision
}
