// Subsquid under the benchmark: an EvmBatchProcessor over plain RPC (no archive/gateway)
// for the Transfer logs of both contracts, with an in-memory hot database so that it
// follows reorgs the way its TypeORM store does (roll back blocks above the fork base).
// The rows are served on GET http://127.0.0.1:$STATE_PORT/ so the benchmark can check
// exactness. Settings are Subsquid's defaults except the RPC URL and the finality depth.
'use strict'
const http = require('http')
const {EvmBatchProcessor} = require('@subsquid/evm-processor')

const env = process.env
const TRANSFER = '0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef'
const to = env.END_BLOCK ? Number(env.END_BLOCK) : undefined

const processor = new EvmBatchProcessor()
  .setRpcEndpoint({url: env.RPC_URL})
  .setFinalityConfirmation(Number(env.FINALITY || 5))
  .setChainPollInterval(Number(env.POLL_MS || 100))
  .setBlockRange({from: Number(env.START_BLOCK), to})
  .setFields({log: {transactionHash: true}})
  .addLog({address: [env.NFT.toLowerCase(), env.TOKEN.toLowerCase()], topic0: [TRANSFER]})

const rows = new Map() // height -> [[block, logIndex, txHash, address], ...]
let state = {height: -1, hash: '0x', top: []}

function dropAbove(height) {
  for (const h of [...rows.keys()]) if (h > height) rows.delete(h)
}

const store = {
  add(block, log) {
    const list = rows.get(block) || []
    list.push([block, log.logIndex, log.transactionHash, log.address])
    rows.set(block, list)
  },
}

const db = {
  supportsHotBlocks: true,
  async connect() {
    return {...state, top: [...state.top]}
  },
  async transact(info, cb) {
    dropAbove(info.prevHead.height)
    await cb(store)
    state = {height: info.nextHead.height, hash: info.nextHead.hash, top: []}
  },
  async transactHot(info, cb) {
    // deprecated path, kept for older processor versions
    dropAbove(info.baseHead.height)
    for (const block of info.newBlocks) await cb(store, block)
    this._hot(info)
  },
  async transactHot2(info, cb) {
    dropAbove(info.baseHead.height)
    await cb(store, 0, info.newBlocks.length)
    this._hot(info)
  },
  _hot(info) {
    const top = state.top.filter((b) => b.height <= info.baseHead.height).concat(info.newBlocks)
    const finalized = info.finalizedHead
    state = {
      height: Math.max(state.height, finalized.height),
      hash: finalized.height >= state.height ? finalized.hash : state.hash,
      top: top.filter((b) => b.height > finalized.height),
    }
  },
}

let processed = -1
processor.run(db, async (ctx) => {
  for (const block of ctx.blocks) {
    for (const log of block.logs) ctx.store.add(block.header.height, log)
    processed = block.header.height
  }
  // A run "to the head" is done once the handler has seen the last block: the processor
  // itself would wait for that block to become final, which never happens on a still chain.
  if (to !== undefined && processed >= to) setImmediate(() => process.exit(0))
})

if (env.STATE_PORT) {
  http
    .createServer((req, res) => {
      const from = Number(new URL(req.url, 'http://x').searchParams.get('from') || -1)
      const all = []
      for (const [height, list] of rows) if (height > from) all.push(...list)
      const top = state.top.length ? state.top[state.top.length - 1] : state
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({height: Math.max(top.height, processed), rows: all}))
    })
    .listen(Number(env.STATE_PORT), '127.0.0.1')
}

if (env.OUT_FILE) {
  process.on('exit', () => {
    const all = []
    for (const list of rows.values()) all.push(...list)
    require('fs').writeFileSync(env.OUT_FILE, JSON.stringify(all))
  })
}
