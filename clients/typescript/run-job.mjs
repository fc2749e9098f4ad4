// Runs a command as a Baton job and follows its output to the end:
//
//   node run-job.mjs [--protocol P] [--path SCRIPT] [--] [COMMAND [ARGS...]]
//
// COMMAND is an allow-listed program, run with ARGS (default: sh -c 'echo
// hello from baton'); --path names a script in the workers' scripts
// directory for it to run ("--path count.sh bash"). --protocol is the wire
// protocol: connect (the default), grpc or grpc-web.
//
// The connection is configured as the baton CLI's is, by the same
// variables: BATON_CLIENT_SCHEDULER (default http://127.0.0.1:7080, the
// plain listener of `baton dev`), and for https:// BATON_CLIENT_CA_FILE,
// BATON_CLIENT_CERT_FILE and BATON_CLIENT_KEY_FILE (the mutual-TLS port,
// https://127.0.0.1:7070 under `baton dev`), BATON_CLIENT_TOKEN for a
// listener that takes bearer tokens.
//
// The exit status is 0 when the job succeeded, the job's own exit code when
// it failed with one, and 1 otherwise (killed, stopped, timed out, or an
// error from the scheduler).
import { readFileSync } from "node:fs";

import { ConnectError, createClient } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";

import { JobState, OutputStream } from "./gen/baton/v1/job_pb.js";
import { SchedulerService } from "./gen/baton/v1/scheduler_service_pb.js";

const env = process.env;
const caFile = env.BATON_CLIENT_CA_FILE;
const certFile = env.BATON_CLIENT_CERT_FILE;
const keyFile = env.BATON_CLIENT_KEY_FILE;
const token = env.BATON_CLIENT_TOKEN;

// As for the CLI, host:port means https when a CA or a client certificate
// is configured, h2c otherwise.
let baseUrl = env.BATON_CLIENT_SCHEDULER || "http://127.0.0.1:7080";
if (!baseUrl.includes("://")) {
  baseUrl = (caFile || certFile ? "https://" : "http://") + baseUrl;
}

const options = { path: "", protocol: "connect" };
let argv = process.argv.slice(2);
while (argv.length > 1 && (argv[0] === "--path" || argv[0] === "--protocol")) {
  options[argv[0].slice(2)] = argv[1];
  argv = argv.slice(2);
}
if (argv[0] === "--") {
  argv = argv.slice(1);
}
const [command, ...args] = argv.length > 0 ? argv : ["sh", "-c", "echo hello from baton"];

// TLS options for node:https and node:http2; unused on http:// URLs.
const nodeOptions = {};
if (caFile) nodeOptions.ca = readFileSync(caFile);
if (certFile) nodeOptions.cert = readFileSync(certFile);
if (keyFile) nodeOptions.key = readFileSync(keyFile);

const interceptors = [];
if (token) {
  interceptors.push((next) => (req) => {
    req.header.set("Authorization", `Bearer ${token}`);
    return next(req);
  });
}

// gRPC needs HTTP/2 (h2c on an http:// URL: the listener speaks it with
// prior knowledge); Connect and gRPC-Web also work over HTTP/1.1, which is
// what a browser or a proxy in between may limit them to.
const transports = {
  connect: () => createConnectTransport({ baseUrl, httpVersion: "1.1", nodeOptions, interceptors }),
  grpc: () => createGrpcTransport({ baseUrl, nodeOptions, interceptors }),
  "grpc-web": () => createGrpcWebTransport({ baseUrl, httpVersion: "1.1", nodeOptions, interceptors }),
};

async function main(transport) {
  const client = createClient(SchedulerService, transport);

  const started = await client.startJob({ command, path: options.path, args });
  const jobId = started.jobId;
  console.error(`job ${jobId} started on ${started.jobs[0]?.workerId ?? "a worker"}`);

  // The job outlives this call: if the stream breaks, StreamJobOutput with
  // the same job id and the offset reached picks up where it stopped.
  let final;
  for await (const res of client.streamJobOutput({ jobId, follow: true })) {
    switch (res.event.case) {
      case "chunk": {
        const { stream, data } = res.event.value;
        (stream === OutputStream.STDERR ? process.stderr : process.stdout).write(data);
        break;
      }
      case "status":
        final = res.event.value;
        break;
    }
  }
  if (!final) {
    throw new Error(`the output stream of job ${jobId} ended without its final status`);
  }
  console.error(`job ${jobId}: JOB_STATE_${JobState[final.state]} (${final.reason})`);
  if (final.state === JobState.SUCCEEDED) {
    return 0;
  }
  return final.exitCode || 1;
}

const transport = transports[options.protocol];
if (!transport) {
  console.error(`run-job: --protocol must be connect, grpc or grpc-web, not ${JSON.stringify(options.protocol)}`);
  process.exit(2);
}
try {
  process.exitCode = await main(transport());
} catch (err) {
  // A ConnectError's message starts with its code: "[not_found] …".
  console.error(`baton: ${ConnectError.from(err).message}`);
  process.exitCode = 1;
}
