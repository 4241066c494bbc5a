"""How the agent is reached: the MQTT link, where replies go, the local HTTP endpoint and
the technician's page.
"""
