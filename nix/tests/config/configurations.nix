# The systems of the VM tests' config flake, one per target. The flake in the VMs calls this,
# and so does the test on the build host, which builds every one of them ahead: the targets
# switch offline, and find everything they need in their store.
{
  # nixpkgs' source: the flake input in the VMs, its store path on the build host
  nixpkgs,
  # hosts.json: { <target> = { system; marker; broken; network; }; }
  hosts,
}:
builtins.mapAttrs (
  name: host:
  import "${nixpkgs}/nixos/lib/eval-config.nix" {
    system = null;
    modules = [
      # What every test node runs (qemu-vm.nix, the test driver's backdoor) and the node's own
      # network config: after the switch, the driver and the other nodes still reach it.
      "${nixpkgs}/nixos/lib/testing/nixos-test-base.nix"
      host.network
      ./target.nix
      {
        nixpkgs.hostPlatform = host.system;
        environment.etc."fleet-marker".text = host.marker + "\n";
        assertions = [
          {
            assertion = !host.broken;
            message = "${name}: this configuration is broken on purpose (fleet VM test)";
          }
        ];
      }
    ];
  }
) hosts
