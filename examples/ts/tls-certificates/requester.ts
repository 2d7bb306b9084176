#!/usr/bin/env node
// A web application asking for a certificate: the requester side of
// tls-certificates. It calls the certificate authority, waits for the
// answer, and checks the certificate with node:crypto: subject, subject
// alternative names, issuer, signature by the CA, and that the key matches.
//
//   node examples/ts/tls-certificates/requester.ts --unit webapp/0 --cn web.example --san web.example --san 10.0.0.5
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { isIP } from 'node:net';
import { exampleArgs } from '../args.ts';

const { values, connection } = exampleArgs({ cn: { type: 'string' }, san: { type: 'string', multiple: true } });
const commonName = values.cn;
if (typeof commonName !== 'string') throw new Error('--cn <common name> is required');
const sans = (values.san as string[] | undefined) ?? [];
const requester = connection.requester('tls-certificates', values.relation ? { relation: values.relation as string } : {});

const { response } = await requester.call({ common_name: commonName, sans }, { waitForResponders: true, deadline: Date.now() + 30_000 });
connection.close();
if (response.code !== 0) throw new Error(`the CA refused: ${response.error}`);

const certificate = new X509Certificate(response.fields.cert);
const ca = new X509Certificate(response.fields.ca ?? '');
const expectedSans = sans.map((san) => (isIP(san) ? `IP Address:${san}` : `DNS:${san}`)).join(', ');
const checks = {
  subject: certificate.subject === `CN=${commonName}`,
  sans: (certificate.subjectAltName ?? '') === expectedSans,
  issuer: certificate.issuer === ca.subject && certificate.checkIssued(ca),
  signature: certificate.verify(ca.publicKey),
  key: certificate.checkPrivateKey(createPrivateKey(response.fields.key)),
};
process.stdout.write(`${JSON.stringify({ subject: certificate.subject, subjectAltName: certificate.subjectAltName, issuer: certificate.issuer, checks })}\n`);
if (!Object.values(checks).every(Boolean)) process.exitCode = 1;
