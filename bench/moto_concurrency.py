"""Is moto the limit on the poll bench? Times 1, 10 sequential and 10 concurrent SendMessage calls
against one moto_server, with boto3. Run: .venv-bench/bin/python bench/moto_concurrency.py"""
import boto3, time, subprocess, socket, threading, statistics
from concurrent.futures import ThreadPoolExecutor
s=socket.socket(); s.bind(("127.0.0.1",0)); port=s.getsockname()[1]; s.close()
p=subprocess.Popen([str(__import__("pathlib").Path(__file__).resolve().parent.parent / ".venv" / "bin" / "moto_server"),"-H","127.0.0.1","-p",str(port)],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
time.sleep(3)
sqs=boto3.client("sqs",endpoint_url=f"http://127.0.0.1:{port}",region_name="us-east-1",aws_access_key_id="t",aws_secret_access_key="t")
q=sqs.create_queue(QueueName="c")["QueueUrl"]
send=lambda i: sqs.send_message(QueueUrl=q,MessageBody="x"*200,DelaySeconds=30)
for _ in range(5): send(0)
def seq():
    t=time.perf_counter(); [send(i) for i in range(10)]; return time.perf_counter()-t
def conc():
    t=time.perf_counter()
    with ThreadPoolExecutor(10) as ex: list(ex.map(send, range(10)))
    return time.perf_counter()-t
one=[]; 
for _ in range(10):
    t=time.perf_counter(); send(0); one.append(time.perf_counter()-t)
print("1 send ms", statistics.median(one)*1000)
print("10 sequential ms", statistics.median([seq() for _ in range(10)])*1000)
print("10 concurrent ms", statistics.median([conc() for _ in range(10)])*1000)
p.kill()
