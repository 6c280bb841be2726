// A real AG-UI client against threadlog: @ag-ui/client's HttpAgent under Node
// (tests/e2e/test_ag_ui_client.py installs it and runs this). It runs a conversation,
// drops the stream mid-run (abortRun), waits, resumes with the last event's cursor
// (metadata.threadlog.cursor, sent back as Last-Event-ID), then runs a second turn.
// It prints one JSON document: what the client saw and what it ended up holding.
//
// usage: node ag_ui_client.cjs <client dir> <base url> <api key> <thread id> <drop after>

const path = require("node:path");
const [clientDir, baseUrl, apiKey, threadId, dropAfter] = process.argv.slice(2);
const { HttpAgent } = require(path.join(clientDir, "node_modules", "@ag-ui", "client"));

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const headers = { "X-API-Key": apiKey };
  const agent = new HttpAgent({ url: `${baseUrl}/v1/ag-ui`, headers, threadId });
  const seen = [];
  let cursor = null;
  let contents = 0;
  let dropped = false;
  const subscriber = {
    onEvent({ event }) {
      const position = event.metadata && event.metadata.threadlog;
      seen.push({ type: event.type, cursor: position ? position.cursor : null });
      if (position) cursor = position.cursor;
      if (event.type === "TEXT_MESSAGE_CONTENT") {
        contents += 1;
        if (!dropped && contents >= Number(dropAfter)) {
          dropped = true;
          agent.abortRun(); // the connection drops mid-run
        }
      }
    },
  };
  agent.subscribe(subscriber);

  agent.addMessage({ id: "user-1", role: "user", content: "talk to me" });
  const first = await agent.runAgent({ runId: "run-1" });
  const afterDrop = { cursor, contents, messages: JSON.parse(JSON.stringify(agent.messages)) };

  await sleep(1500); // the run goes on without its client
  agent.headers = { ...headers, "Last-Event-ID": cursor };
  const resumed = await agent.runAgent({ runId: "run-1" });
  const afterResume = JSON.parse(JSON.stringify(agent.messages));

  agent.addMessage({ id: "user-2", role: "user", content: "and again" });
  const second = await agent.runAgent({ runId: "run-2" });

  process.stdout.write(
    JSON.stringify({
      afterDrop,
      afterResume,
      final: agent.messages,
      seen,
      newMessages: {
        first: first.newMessages.length,
        resumed: resumed.newMessages.length,
        second: second.newMessages.length,
      },
    }),
  );
}

main().catch((error) => {
  process.stderr.write(`ag-ui client failed: ${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
});
