# Stand-in for nixpkgs' nixos/lib/testing/nixos-test-base.nix (qemu-vm.nix's options are
# declared by ../../modules/stand-ins.nix).
{ lib, ... }:
{
  key = "nixos-test-base";
  system.switch.enable = lib.mkDefault false;
}
