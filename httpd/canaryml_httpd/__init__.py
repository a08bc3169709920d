"""HTTP connection limits shared by the model server and the router (neither imports the other).

`limits` holds the numbers and the pure decisions (settings modules import it without
uvicorn); `protocol` applies them to uvicorn's httptools protocol.
"""
