"""The EPICS IOC layer: PV table, controller, CA (caproto) and PVA (pvapy) servers."""
