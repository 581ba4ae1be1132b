"""Linear probes of a saved CLIP vision tower's per-cell features on the demo's scenes (docs/benchmarks.md, "Fifth round").

    python benchmarks/demo_tower_probe.py DIR/vision-tower

Prints R² (share of the middle-row cells' feature variance explained by their (colour, shape) class) and the
accuracy of least-squares linear probes for colour and shape (trained on half of 2048 fresh scenes, scored on the
other half), at the layer LLaVA reads (`hidden_states[-2]`).
"""
import sys, random, torch, numpy as np
from transformers import CLIPVisionModel
from demo.scenes import random_scene, COLORS, SHAPES, POSITIONS
torch.set_num_threads(2)
m = CLIPVisionModel.from_pretrained(sys.argv[1]).eval()
mean=np.array([0.48145466,0.4578275,0.40821073]); std=np.array([0.26862954,0.26130258,0.27577711])
def pix(im): return torch.tensor(((np.asarray(im,dtype=np.float32)/255-mean)/std).transpose(2,0,1),dtype=torch.float32)
CN=list(COLORS); prng=random.Random(5); F=[];Cs=[];Ss=[]
with torch.no_grad():
    for _ in range(16):
        scs=[random_scene("p",prng,m.config.image_size,(1,)) for _ in range(128)]
        P=torch.stack([pix(im) for _,im in scs])
        h=m(pixel_values=P, output_hidden_states=True).hidden_states[-2][:,1:].reshape(-1,3,3,m.config.hidden_size)[:,1].reshape(-1,m.config.hidden_size)
        F.append(h)
        for sc,_ in scs:
            c=[0,0,0]; s=[0,0,0]
            for o in sc.objects: k=POSITIONS.index(o.position); c[k]=1+CN.index(o.color); s[k]=1+SHAPES.index(o.shape)
            Cs+=c; Ss+=s
F=torch.cat(F); C=torch.tensor(Cs); S=torch.tensor(Ss)
n=len(F)//2; X=torch.cat([F,torch.ones(len(F),1)],1)
def probe(y,k):
    Y=torch.nn.functional.one_hot(y,k).float(); W=torch.linalg.lstsq(X[:n],Y[:n]).solution
    return ((X[n:]@W).argmax(1)==y[n:]).float().mean().item()
cls=C*4+S; Fm=F-F.mean(0); means=torch.zeros(28,F.shape[1])
for k in cls.unique(): means[k]=Fm[cls==k].mean(0)
r2=1-((Fm-means[cls])**2).sum()/(Fm**2).sum()
print(sys.argv[1], "R2", round(r2.item(),3), "probe colour", round(probe(C,7),3), "shape", round(probe(S,4),3))
