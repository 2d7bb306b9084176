// Type-level tests of the SDK: request and response fields are typed by the
// interface's generated messages. `npx tsc -p .` checks the @ts-expect-error
// lines (an unused one is itself an error); vitest runs the expectTypeOf ones.
import { describe, expectTypeOf, it } from 'vitest';
import type { CertificateRequest } from '../gen/relgate/interfaces/tls_certificates/v1/CertificateRequest.ts';
import { connect, type Request, type RequestFields, type Requester, type Responder, type Response, type ResponseFields, type WatchEvent } from '../src/client/index.ts';

// Never called: the bodies only need to type-check.
function requesterCalls(requester: Requester<'tls-certificates'>) {
  void requester.create({ common_name: 'a.example', sans: ['b.example'] });
  // @ts-expect-error common_name is required by the interface
  void requester.create({ sans: ['b.example'] });
  // @ts-expect-error no such field in CertificateRequest
  void requester.create({ common_name: 'a.example', commonName: 'x' });
  // @ts-expect-error sans is a list of strings
  void requester.create({ common_name: 'a.example', sans: 'b.example' });
  void requester.createOrUpdate(['common_name'], { common_name: 'a.example' });
  // @ts-expect-error match fields name request fields
  void requester.createOrUpdate(['cn'], { common_name: 'a.example' });
  void requester.find({ sans: ['x'] });
  // @ts-expect-error find matches request fields only
  void requester.find({ cert: 'x' });
}

function responderCalls(responder: Responder<'tls-certificates'>, request: Request<RequestFields<'tls-certificates'>>) {
  void responder.respond(request, { key: 'k', cert: 'c', ca: 'ca' });
  // @ts-expect-error cert is required in a successful response
  void responder.respond(request, { key: 'k' });
  // @ts-expect-error port belongs to the http interface
  void responder.respond(request, { key: 'k', cert: 'c', port: 80 });
  // A failure may leave required fields out.
  void responder.fail(request, 3, 'refused', { ca: 'ca' });
  // @ts-expect-error but not add unknown ones
  void responder.fail(request, 3, 'refused', { reason: 'x' });
}

function httpCalls(requester: Requester<'http'>, responder: Responder<'http'>, request: Request<RequestFields<'http'>>) {
  void requester.create({ service_name: 'web' });
  // @ts-expect-error no common_name in the http interface
  void requester.create({ common_name: 'a.example' });
  void responder.respond(request, { hostname: 'web-0', port: 8080 });
  // @ts-expect-error port is a number
  void responder.respond(request, { hostname: 'web-0', port: '8080' });
}

describe('SDK types', () => {
  it('types fields by interface', () => {
    expectTypeOf<RequestFields<'tls-certificates'>>().toHaveProperty('common_name').toEqualTypeOf<string>();
    expectTypeOf<RequestFields<'tls-certificates'>['sans']>().toEqualTypeOf<string[] | undefined>();
    expectTypeOf<ResponseFields<'tls-certificates'>['cert']>().toEqualTypeOf<string>();
    expectTypeOf<ResponseFields<'tls-certificates'>['ca']>().toEqualTypeOf<string | undefined>();
    expectTypeOf<ResponseFields<'http'>['port']>().toEqualTypeOf<number>();
    expectTypeOf<RequestFields<'tls-certificates'>>().toMatchTypeOf<CertificateRequest>();
  });

  it('gives endpoints, results and watch events the interface types', () => {
    const connection = connect('127.0.0.1:1', { unit: 'web/0' });
    const requester = connection.requester('tls-certificates');
    const responder = connection.responder('http');
    expectTypeOf(requester).toEqualTypeOf<Requester<'tls-certificates'>>();
    expectTypeOf(responder).toEqualTypeOf<Responder<'http'>>();
    expectTypeOf(requester.create).returns.resolves.toEqualTypeOf<Request<RequestFields<'tls-certificates'>>>();
    expectTypeOf(requester.call).returns.resolves.toHaveProperty('response').toEqualTypeOf<Response<ResponseFields<'tls-certificates'>>>();
    expectTypeOf(responder.newRequests).returns.resolves.toEqualTypeOf<Request<RequestFields<'http'>>[]>();
    expectTypeOf(requester.watch).returns.toMatchTypeOf<AsyncIterable<WatchEvent<RequestFields<'tls-certificates'>, ResponseFields<'tls-certificates'>>>>();
    // @ts-expect-error interfaces are known by name
    expectTypeOf(connection.requester('tls-certificate')).toBeObject();
    connection.close();
  });

  it('keeps the type-only checks above compiled', () => {
    expectTypeOf(requesterCalls).toBeFunction();
    expectTypeOf(responderCalls).toBeFunction();
    expectTypeOf(httpCalls).toBeFunction();
  });
});
