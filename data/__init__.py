"""The samples ragcli ships (written for this project, not taken from any dataset): `ragcli.data`."""
