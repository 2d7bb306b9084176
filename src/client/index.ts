// relgate's TypeScript SDK: connect to a gateway and act as a unit on the
// requester or responder side of its relations.
export { connect, Connection, type ConnectOptions, type EndpointOptions, type TlsOptions } from './connect.ts';
export { Requester, type CallAllResult, type CallResult } from './requester.ts';
export { Responder, type RequestRef } from './responder.ts';
export { ClientSession, type SessionOptions, type SessionWatchOptions } from './session.ts';
export { Watch } from './watch.ts';
export { Code, RelgateError, hasCode, hasReason, isRelgateError, type FieldViolation } from './errors.ts';
export type * from './types.ts';
