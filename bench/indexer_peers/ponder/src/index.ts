import { ponder } from "ponder:registry";
import { transfer } from "ponder:schema";

async function record(event: any, context: any) {
  await context.db.insert(transfer).values({
    id: event.id,
    block: event.block.number,
    logIndex: event.log.logIndex,
    txHash: event.transaction.hash,
    address: event.log.address.toLowerCase(),
  });
}

ponder.on("Nft:Transfer", async ({ event, context }) => record(event, context));
ponder.on("Token:Transfer", async ({ event, context }) => record(event, context));
