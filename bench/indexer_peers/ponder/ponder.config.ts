// Ponder under the benchmark: both contracts' Transfer events from the local anvil (via
// the counting proxy). Addresses, start block and RPC come from the environment that
// bench/indexer.py sets; everything else is Ponder's default.
import { createConfig } from "ponder";
import { parseAbi } from "viem";

const erc721 = parseAbi([
  "event Transfer(address indexed from, address indexed to, uint256 indexed tokenId)",
]);
const erc20 = parseAbi([
  "event Transfer(address indexed from, address indexed to, uint256 value)",
]);
const start = Number(process.env.START_BLOCK);
const end = process.env.END_BLOCK ? Number(process.env.END_BLOCK) : undefined;

export default createConfig({
  database: { kind: "pglite", directory: process.env.PGLITE_DIR },
  chains: {
    anvil: {
      id: Number(process.env.CHAIN_ID ?? 31337),
      rpc: process.env.RPC_URL,
      pollingInterval: Number(process.env.POLL_MS ?? 100),
    },
  },
  contracts: {
    Nft: {
      chain: "anvil",
      abi: erc721,
      address: process.env.NFT as `0x${string}`,
      startBlock: start,
      endBlock: end,
    },
    Token: {
      chain: "anvil",
      abi: erc20,
      address: process.env.TOKEN as `0x${string}`,
      startBlock: start,
      endBlock: end,
    },
  },
});
