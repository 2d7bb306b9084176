#!/usr/bin/env node
// A certificate authority: the responder side of tls-certificates. It makes
// a CA key and self-signed certificate at start, then answers every request
// addressed to its unit with a fresh key and a certificate for the requested
// common name and subject alternative names, signed by the CA.
//
//   node examples/ts/tls-certificates/ca.ts --unit ca/0 [--relation <id>]
import 'reflect-metadata';
import { KeyObject, webcrypto } from 'node:crypto';
import { isIP } from 'node:net';
import * as x509 from '@peculiar/x509';
import { closeOnSignal, exampleArgs } from '../args.ts';

x509.cryptoProvider.set(webcrypto as never); // Node's Web Crypto implements the DOM Crypto type the library names
const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
const DAY = 24 * 3600 * 1000;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

interface Authority {
  keys: CryptoKeyPair;
  certificate: x509.X509Certificate;
}

function newKeys(): Promise<CryptoKeyPair> {
  return webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify']) as Promise<CryptoKeyPair>;
}

function serialNumber(): string {
  return Buffer.from(webcrypto.getRandomValues(new Uint8Array(16))).toString('hex').replace(/^[89a-f]/, '1');
}

async function newAuthority(name: string): Promise<Authority> {
  const keys = await newKeys();
  const certificate = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name: `CN=${name}`,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 365 * DAY),
    signingAlgorithm: ALGORITHM,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { keys, certificate };
}

/** A key and a certificate for commonName and sans (DNS names or IP addresses), signed by the authority. */
async function issue(authority: Authority, commonName: string, sans: string[]): Promise<{ key: string; cert: string; ca: string }> {
  const keys = await newKeys();
  const certificate = await x509.X509CertificateGenerator.create({
    serialNumber: serialNumber(),
    subject: `CN=${commonName}`,
    issuer: authority.certificate.subject,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 90 * DAY),
    signingAlgorithm: ALGORITHM,
    publicKey: keys.publicKey,
    signingKey: authority.keys.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension(sans.map((san) => ({ type: isIP(san) ? 'ip' : 'dns', value: san }))),
      await x509.AuthorityKeyIdentifierExtension.create(authority.certificate),
    ],
  });
  const key = KeyObject.from(keys.privateKey).export({ type: 'pkcs8', format: 'pem' }) as string;
  return { key, cert: certificate.toString('pem'), ca: authority.certificate.toString('pem') };
}

const { values, connection } = exampleArgs({ 'ca-name': { type: 'string', default: 'relgate example CA' } });
const authority = await newAuthority(values['ca-name'] as string);
const responder = connection.responder('tls-certificates', values.relation ? { relation: values.relation as string } : {});
const requests = responder.watch({ filter: 'new' });
closeOnSignal(() => connection.close());
process.stdout.write(`${JSON.stringify({ ca: values.unit, ready: true })}\n`);

try {
  for await (const event of requests) {
    if (event.type !== 'ADDED' || !event.request) continue;
    const request = event.request;
    const { common_name, sans = [] } = request.fields;
    try {
      await responder.respond(request, await issue(authority, common_name, sans));
      process.stdout.write(`${JSON.stringify({ issued: common_name, sans, for: request.source_unit })}\n`);
    } catch (error) {
      // A SAN the certificate library refuses is the requester's mistake: answer with a failure.
      await responder.fail(request, 3, `cannot issue a certificate: ${error instanceof Error ? error.message : String(error)}`).catch(() => undefined);
    }
  }
} catch (error) {
  // The watch ended with an error it cannot recover from (bad credentials, unknown unit...).
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
}
