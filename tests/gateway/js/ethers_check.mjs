// ethers v6 through the gateway, unchanged: reads, a signed transfer, its receipt.
// Usage: node ethers_check.mjs http://127.0.0.1:PORT/rpc/CHAIN
import { ethers } from "ethers";

const url = process.argv[2];
// cacheTimeout -1: ethers would otherwise answer a repeated getBalance from its own
// 250 ms cache, whatever the node (or gateway) says.
const provider = new ethers.JsonRpcProvider(url, undefined, {
  staticNetwork: true,
  cacheTimeout: -1,
});
// anvil's first default account (the well-known test mnemonic)
const wallet = new ethers.Wallet(
  "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
  provider,
);
const bob = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const network = await provider.getNetwork();
const before = await provider.getBalance(bob);
const tx = await wallet.sendTransaction({ to: bob, value: ethers.parseEther("1") });
const receipt = await tx.wait(1, 10000);
const after = await provider.getBalance(bob);
const head = await provider.getBlockNumber();
const block = await provider.getBlock("latest");
console.log(
  JSON.stringify({
    chainId: network.chainId.toString(),
    status: receipt.status,
    delta: (after - before).toString(),
    headAtLeastReceipt: head >= receipt.blockNumber && block.number >= receipt.blockNumber,
  }),
);
provider.destroy();
