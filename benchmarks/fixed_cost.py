"""Fixed cost before the first stage, each piece alone: Python's start, `import torch`, `import ray`,
`ray.init` of a local Ray (2 CPUs, no dashboard), a bare actor's first answer, and a shard
worker's (vgray.run.worker.ShardWorker) first answer, then a second one's. Best of 3 fresh processes.

    python benchmarks/fixed_cost.py
"""
import json
import subprocess
import sys
import time

def best(cmd, n=3):
    ts=[]
    for _ in range(n):
        t=time.perf_counter(); subprocess.run(cmd, check=True, capture_output=True); ts.append(time.perf_counter()-t)
    return round(min(ts),2)
py=sys.executable
out={}
out["python_start"]=best([py,"-c","pass"])
out["import_torch"]=best([py,"-c","import torch"])
out["import_ray"]=best([py,"-c","import ray"])
code='''
import time, ray, logging
t=time.perf_counter()
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
t1=time.perf_counter()
from vgray.run.worker import ShardWorker
@ray.remote
class Bare:
    def ping(self): return 1
a=Bare.remote(); ray.get(a.ping.remote()); t2=time.perf_counter(); ray.kill(a)
w=ShardWorker.remote("rgb", 8192, "cpu", None, time.time()); ray.get(w.node.remote()); t3=time.perf_counter()
ws=[ShardWorker.remote("rgb", 8192, "cpu", None, time.time()) for _ in range(1)]; ray.get([x.node.remote() for x in ws]); t4=time.perf_counter()
print(round(t1-t,2), round(t2-t1,2), round(t3-t2,2), round(t4-t3,2))
ray.shutdown()
'''
rs=[]
for _ in range(3):
    r=subprocess.run([py,"-c",code],capture_output=True,text=True,check=True); rs.append([float(v) for v in r.stdout.split()[-4:]])
out["ray_init"]=min(r[0] for r in rs); out["bare_actor_first"]=min(r[1] for r in rs); out["shardworker_actor"]=min(r[2] for r in rs); out["second_shardworker"]=min(r[3] for r in rs)
print(json.dumps(out))
