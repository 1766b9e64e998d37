"""fleet.toml -> Inventory: finding, reading and validating the file, and choosing hosts.

The modules, one concept each::

    inventory.py   Inventory, find_config, load_inventory, parse_inventory: the whole file
    toml_table.py  Table: one TOML table's typed readers (unknown keys refused), first_set
    validate.py    the value validators (`check_*`): hosts, paths, refs, units, names
    dialling.py    the `[ssh]` table and how each host is dialled
    sshconfig.py   SshConfig: what ~/.ssh/config says about an alias
    selection.py   select_hosts: the selector language of `--on` and the web API's "on"

Nothing here runs anything or opens a connection.
"""

from fleet.config.inventory import Inventory, find_config, load_inventory, parse_inventory
from fleet.config.selection import select_hosts

__all__ = ["Inventory", "find_config", "load_inventory", "parse_inventory", "select_hosts"]
