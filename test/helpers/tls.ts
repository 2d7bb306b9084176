// Throw-away certificates made with openssl for the TLS tests.
import { execFileSync } from 'node:child_process';
import path from 'node:path';

function openssl(dir: string, ...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
}

/** A CA, a server certificate for 127.0.0.1/localhost, and client certificates by common name. */
export function makeCertificates(dir: string, clients: string[]): { ca: string; serverCert: string; serverKey: string; client(cn: string): { cert: string; key: string } } {
  openssl(dir, 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=relgate test CA');
  const sign = (name: string, subject: string) => {
    openssl(dir, 'req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject);
    openssl(dir, 'x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.ext`);
  };
  const write = (name: string, ext: string) => execFileSync('sh', ['-c', `printf '%s\\n' "${ext}" > ${name}.ext`], { cwd: dir });
  write('server', 'subjectAltName=IP:127.0.0.1,DNS:localhost');
  sign('server', '/CN=localhost');
  clients.forEach((cn, i) => {
    write(`client${i}`, 'extendedKeyUsage=clientAuth');
    sign(`client${i}`, `/CN=${cn.replaceAll("/", "\\/")}`);
  });
  const file = (name: string) => path.join(dir, name);
  return {
    ca: file('ca.pem'),
    serverCert: file('server.pem'),
    serverKey: file('server.key'),
    client: (cn) => {
      const i = clients.indexOf(cn);
      return { cert: file(`client${i}.pem`), key: file(`client${i}.key`) };
    },
  };
}
