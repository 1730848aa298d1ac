"""Ray clusters: the embedded local one (head + labelled worker nodes on this host) and the
inventory of any cluster (local or remote) that preflight checks jobs against."""
