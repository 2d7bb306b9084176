// The longest deadline a grpc-js server reads right: a client sends a
// deadline this far away as whole seconds, rounded up, and the server keeps
// it in a 32-bit integer of milliseconds. A longer one wraps around, and the
// call ends at once (for Call, with its request stored).
export const MAX_DEADLINE_MS = 2_147_483_000;
