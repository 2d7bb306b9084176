// Estimates of a message's encoded size, for cutting what is sent into messages that stay under the largest one
// grpc-js sends: encoding a message to measure it would cost as much as sending it.

/**
 * A generous estimate of the bytes a value takes in a message: 3 a character (the most UTF-8 takes for one UTF-16
 * unit), 10 a scalar, and room for each key and item.
 */
export function textSize(value: unknown): number {
  if (typeof value === 'string') return value.length * 3;
  if (typeof value !== 'object' || value === null) return 10;
  let size = 0;
  if (Array.isArray(value)) for (const item of value) size += 2 + textSize(item);
  else for (const key in value) size += key.length * 3 + 4 + textSize((value as Record<string, unknown>)[key]);
  return size;
}
