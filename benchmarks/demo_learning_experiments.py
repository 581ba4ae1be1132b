"""Hand-loop experiments behind the offline demo's design (docs/benchmarks.md, "Demo learning experiments").

A research script, not product code: a plain PyTorch loop (no Trainer) over freshly drawn synthetic scenes, to find
what makes SmolLM2-135M learn to read image tokens within a few hundred CPU steps. Everything is set by environment
variables, e.g.

    ORACLE=1 S1=150 LR1=1e-2 PROJ=linear STATINIT=1.0 S2=60 python benchmarks/demo_learning_experiments.py
    TEXT=1 DENSE=0 S2=100 python benchmarks/demo_learning_experiments.py        # the caption as text: LLM ceiling

ORACLE=1: per-cell one-hot features (colour, shape, occupied, cell index) instead of the tower's; IDEAL=1 (with
ORACLE=1, PROJ=linear): a projector set by hand so each cell's token is emb(colour) + emb(shape); TEXT=1: the
caption in the prompt instead of the image; with IDEAL=1, SCALE=s multiplies the hand-set tokens by s (their norm)
and TOK=2 gives each cell two tokens (colour, then shape) instead of one; STATINIT=s: last projector bias = mean word embedding, weights x s;
TRAIN_TOWER / T2: train the tower in stage 1 / stage 2 (LRT); DENSE=1: every question of a scene in one
multi-turn sample, DENSE=2: 2-4 of them (like the demo's conversations), DENSE=0: one; PROJ=mix: each image token is
the sum of HEADS softmax mixtures over the LLM's word embeddings (prints each cell's top word after stage 1);
AC=1: bf16 autocast; ROWS=1: objects only in the middle row (the demo's scenes; default 012); TOWER_DIR=path: a saved
CLIPVisionModel instead of a random tower (e.g. a demo run's `vision-tower`); EVALAT=150,200: also evaluate after
those stage-2 steps.
Projector starts tried for stage 1: STDINIT=g (weights scaled per input feature by 1/std, bias = mean word embedding
minus the mean feature's image), REPARAM=1 (a fixed standardisation in front of the projector), WARM=ridge (closed-form
regression of each image's mean token onto its caption's mean word embedding). Prints the running loss, after stage
1 the colour/shape accuracy of greedy captions on NCAP scenes, and exact-match accuracy on NEVAL held-out scenes.
"""
import sys, time, random, torch, os
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(2)
from modeling_llava.default_llm import smollm2_checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig, CLIPVisionModel
from modeling_llava.build import assemble_llava, add_image_token
from datagen.scenes import random_scene, captions, COLORS, SHAPES, POSITIONS, NUMBER_WORDS
import numpy as np
E = lambda k, d: type(d)(os.environ.get(k, d))
IMG=E("IMG",48); PATCH=E("PATCH",16); HID=E("HID",256); LAYERS=E("LAYERS",2); FL=E("FL",-2)
ORACLE=E("ORACLE",0); TRAIN_TOWER=E("TRAIN_TOWER",0); S1=E("S1",0); S2=E("S2",150); BS=E("BS",8)
LR1=E("LR1",2e-3); LR2=E("LR2",1e-4); LRP2=E("LRP2",1e-3); PROJ=E("PROJ","mlp2x_gelu"); DENSE=E("DENSE",1); AC=E("AC",1)
WD=E("WD",0.0); TEXT=E("TEXT",0); CAP=[""]; ROWS=tuple(int(r) for r in E("ROWS","012")); EVALAT=[int(x) for x in E("EVALAT","").split(",") if x]
t0=time.time()
SMOL = smollm2_checkpoint(); tok = AutoTokenizer.from_pretrained(SMOL); lm = AutoModelForCausalLM.from_pretrained(SMOL)
img_id = add_image_token(tok); lm.resize_token_embeddings(len(tok), mean_resizing=False)
torch.manual_seed(0)
vc = CLIPVisionConfig(hidden_size=HID, intermediate_size=HID*4, num_hidden_layers=LAYERS, num_attention_heads=4, image_size=IMG, patch_size=PATCH)
tower = CLIPVisionModel.from_pretrained(E("TOWER_DIR","")) if E("TOWER_DIR","") else CLIPVisionModel(vc)
model = assemble_llava(tower, lm, img_id, projector_type=("linear" if PROJ=="mix" else PROJ), vision_feature_layer=FL)
class Mix(torch.nn.Module):
    """token = sum over heads of softmax(W_h f + b_h) @ E: each image token is a mixture of word embeddings."""
    def __init__(self, d, emb, heads):
        super().__init__(); self.emb=emb; self.heads=heads; V=emb.weight.shape[0]
        self.logits=torch.nn.Linear(d, heads*V); torch.nn.init.zeros_(self.logits.weight); torch.nn.init.zeros_(self.logits.bias)
        self.T=E("MIXT",1.0)
    def forward(self, x):
        z=self.logits(x); z=z.view(*z.shape[:-1], self.heads, -1)
        p=torch.softmax(z.float()/self.T, -1).to(self.emb.weight.dtype)
        return (p @ self.emb.weight).sum(-2)
if PROJ=="mix":
    model.model.multi_modal_projector = Mix(HID, model.get_input_embeddings(), E("HEADS",3))
TOK=E('TOK',1); N = model.config.image_seq_length*TOK
mean=np.array([0.48145466,0.4578275,0.40821073]); std=np.array([0.26862954,0.26130258,0.27577711])
def pix(im): return torch.tensor(((np.asarray(im,dtype=np.float32)/255-mean)/std).transpose(2,0,1),dtype=torch.float32)
CN=list(COLORS)
def oracle(sc):
    f=torch.zeros(N,HID)
    for k in range(N): f[k,10+k//TOK]=1.0
    for o in sc.objects:
        cx=(o.bbox[0]+o.bbox[2])/2; cy=(o.bbox[1]+o.bbox[3])/2; k=int(cy*3)*3+int(cx*3)
        if TOK==1: f[k,CN.index(o.color)]=1; f[k,6+SHAPES.index(o.shape)]=1; f[k,9]=1
        else: f[2*k,CN.index(o.color)]=1; f[2*k+1,6+SHAPES.index(o.shape)]=1; f[2*k,9]=1
    return f
KEY='vision_features' if ORACLE else 'pixel_values'
def feats(sc, im): return oracle(sc) if ORACLE else pix(im)
def ids(s): return tok(s, add_special_tokens=False).input_ids
def encode(turns):
    """turns: list of (q, a or None); image in first turn. Returns ids, labels."""
    i, l = [], []
    for n,(q,a) in enumerate(turns):
        pre = ids("<|im_start|>user\n") + ((ids("Image: "+CAP[0]+"\n") if TEXT else [img_id]*N + ids("\n")) if n==0 else []) + ids(q+"<|im_end|>\n<|im_start|>assistant\n")
        i += pre; l += [-100]*len(pre)
        if a is not None:
            ans = ids(a+"<|im_end|>\n"); i += ans; l += ans
    return i, l
def qa(scene):
    out=[]
    for o in scene.objects:
        if len(scene.objects_with_shape(o.shape))==1: out.append(("color", f"What color is the {o.shape}? Answer with one word.", o.color))
        out.append(("shape", f"What shape is on the {o.position}? Answer with one word.", o.shape))
    out.append(("count", "How many shapes are there? Answer with one word.", NUMBER_WORDS[len(scene.objects)]))
    return out
rng = random.Random(0)
def batch(kind):
    I, L, P = [], [], []
    for _ in range(BS):
        sc, im = random_scene("x", rng, IMG, ROWS)
        if kind==1:
            i = [img_id]*N + ids("\n"); c = ids(captions(sc, rng, 1)[0] + "\n"); i, l = i + c, [-100]*len(i) + c
        else:
            q = qa(sc); rng.shuffle(q); CAP[0]=captions(sc, rng, 5)[0]
            if not DENSE: q = q[:1]
            elif DENSE==2: q = q[:rng.randint(2,4)]
            i, l = encode([(x[1], x[2].capitalize()+".") for x in q])
        I.append(i); L.append(l); P.append(feats(sc,im))
    M=max(map(len,I)); pad=tok.pad_token_id or 0
    return dict(input_ids=torch.tensor([i+[pad]*(M-len(i)) for i in I]), labels=torch.tensor([l+[-100]*(M-len(l)) for l in L]),
                attention_mask=torch.tensor([[1]*len(i)+[0]*(M-len(i)) for i in I]), **({} if TEXT else {KEY: torch.stack(P)}))
evrng = random.Random(123); evalset=[]
for k in range(E("NEVAL",25)):
    sc, im = random_scene("e", evrng, IMG, ROWS)
    cap=captions(sc, evrng, 5)[0]
    for t,q,a in qa(sc): evalset.append((t,q,a,feats(sc,im),cap))
def evaluate():
    model.eval(); res={}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(AC)):
        for t,q,a,p,cap in evalset:
            CAP[0]=cap; i,_=encode([(q,None)]); out=model.generate(input_ids=torch.tensor([i]), **({} if TEXT else {KEY: p[None]}), max_new_tokens=3, do_sample=False)
            txt=tok.decode(out[0,len(i):], skip_special_tokens=True).strip().lower().replace("."," ").split()
            res.setdefault(t,[]).append(bool(txt) and txt[0]==a)
    model.train(); return {t: round(sum(v)/len(v),2) for t,v in res.items()}
def train(kind, steps, groups):
    opt = torch.optim.AdamW(groups, weight_decay=WD)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s+1)/max(1,steps*0.05)) * max(0.0, 1 - s/steps))
    run=0
    for s in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(AC)):
            loss = model(**batch(kind)).loss
        loss.backward(); opt.step(); sched.step(); opt.zero_grad()
        run = loss.item() if s==0 else 0.9*run+0.1*loss.item()
        if s%25==0 or s==steps-1: print(f"s{kind}", s, round(run,3), round(time.time()-t0,1), flush=True)
        if kind==2 and s+1 in EVALAT: print("at", s+1, evaluate(), round(time.time()-t0,1), flush=True)
if E("STATINIT",0.0):
    lin = [m for m in model.model.multi_modal_projector.modules() if isinstance(m, torch.nn.Linear)][-1]
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        lin.bias.copy_(emb.mean(0)); lin.weight.mul_(E("STATINIT",0.0))
if E("STDINIT",0.0) or E("REPARAM",0):
    # Feature statistics of the (frozen) tower on 256 training-like scenes.
    srng = random.Random(7); Z = []
    with torch.no_grad():
        for _ in range(32):
            P = torch.stack([feats(*random_scene("s", srng, IMG, ROWS)) for _ in range(8)])
            Z.append(P.reshape(-1, P.shape[-1]) if ORACLE else model.model.vision_tower(pixel_values=P, output_hidden_states=True).hidden_states[FL][:, 1:].reshape(-1, HID))
    Z = torch.cat(Z); MU, SD = Z.mean(0), Z.std(0) + 1e-5
    lin = [m for m in model.model.multi_modal_projector.modules() if isinstance(m, torch.nn.Linear)][-1]
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        if E("REPARAM",0):
            # fixed standardisation in front of the projector: a different parameterisation, same function class
            inner = model.model.multi_modal_projector.forward
            model.model.multi_modal_projector.forward = lambda x: inner((x - MU.to(x.dtype)) / SD.to(x.dtype))
            lin.weight.normal_(0, E("STDINIT",0.0) / HID ** 0.5); lin.bias.copy_(emb.mean(0))
        else:
            lin.weight.normal_(0, E("STDINIT",0.0) / HID ** 0.5).div_(SD); lin.bias.copy_(emb.mean(0) - lin.weight @ MU)
    print("feature stats: mean norm", round(MU.norm().item(), 2), "centered", round((Z - MU).norm(dim=1).mean().item(), 2), flush=True)
if E("WARM",0.0):
    # Closed-form warm start of the linear projector on image-caption pairs: ridge regression of the image's mean
    # projected token onto the mean embedding of its caption's tokens (bag of words); stage 1 then refines it.
    wrng = random.Random(11); F, T = [], []
    emb = model.get_input_embeddings().weight.detach().float()
    with torch.no_grad():
        for _ in range(E("WARMN", 1600) // 8):
            scs = [random_scene("w", wrng, IMG, ROWS) for _ in range(8)]
            P = torch.stack([feats(*x) for x in scs])
            Zb = P if ORACLE else model.model.vision_tower(pixel_values=P, output_hidden_states=True).hidden_states[FL][:, 1:]
            F.append(Zb.float().mean(1))
            T += [emb[ids(captions(sc, wrng, 1)[0])].mean(0) for sc, _ in scs]
    F = torch.cat(F); T = torch.stack(T)
    fm, tm = F.mean(0), T.mean(0); Fc, Tc = F - fm, T - tm
    A = Fc.T @ Fc; A += E("WARM", 0.0) * A.trace() / A.shape[0] * torch.eye(A.shape[0])
    Wt = torch.linalg.solve(A, Fc.T @ Tc)  # (in, out)
    lin = [m for m in model.model.multi_modal_projector.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        g = E("WARMG", 1.0); lin.weight.copy_(g * Wt.T); lin.bias.copy_(g * (tm - Wt.T @ fm))
    r2 = 1 - ((Fc @ Wt - Tc) ** 2).sum() / (Tc ** 2).sum()
    print("warm start fitted, train R^2", round(r2.item(), 3), flush=True)
def caption_eval():
    """Colour/shape accuracy of greedy stage-1 captions (objects matched in caption order)."""
    import re
    model.eval(); ok_c = ok_s = tot = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(AC)):
        for sc, p in capset:
            i = [img_id]*N + ids("\n")
            out = model.generate(input_ids=torch.tensor([i]), **{KEY: p[None]}, max_new_tokens=24, do_sample=False)
            w = re.findall(r"[a-z]+", tok.decode(out[0, len(i):], skip_special_tokens=True).split("\n")[0].lower())
            pred = [(w[k], w[k+1]) for k in range(len(w)-1) if w[k] in COLORS and w[k+1] in SHAPES]
            for k, o in enumerate(sc.objects):
                tot += 1
                if k < len(pred): ok_c += pred[k][0] == o.color; ok_s += pred[k][1] == o.shape
    model.train(); return {"caption colour": round(ok_c/tot, 2), "caption shape": round(ok_s/tot, 2)}
caprng = random.Random(321); capset = []
for _ in range(E("NCAP",30)):
    sc, im = random_scene("c", caprng, IMG, ROWS); capset.append((sc, feats(sc, im)))
if E("IDEAL",0):
    W = model.model.multi_modal_projector
    lin = [m for m in W.modules() if isinstance(m, torch.nn.Linear)][0]
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        lin.weight.zero_(); lin.bias.zero_()
        for c,name in enumerate(CN): lin.weight[:, c] = emb[ids(" "+name)[0]]
        for c,name in enumerate(SHAPES): lin.weight[:, 6+c] = emb[ids(" "+name)[0]]
        for k,name in enumerate(["left","middle","right"]*3): lin.weight[:, 10+k] = E("POSW",0.0)*emb[ids(" "+name)[0]]
    with torch.no_grad(): lin.weight.mul_(E("SCALE",1.0))
    print("ideal projector set", [len(ids(" "+n)) for n in CN+list(SHAPES)])
print("setup", round(time.time()-t0,1), "N", N, flush=True)
if E("EVAL0",0): print("before", evaluate(), round(time.time()-t0,1), flush=True)
proj=list(model.model.multi_modal_projector.parameters()); tower=list(model.model.vision_tower.parameters()); llm=list(model.model.language_model.parameters())
for p in model.parameters(): p.requires_grad=False
for p in proj: p.requires_grad=True
if S1:
    if TRAIN_TOWER:
        for p in tower: p.requires_grad=True
    train(1, S1, [{"params": proj, "lr": LR1}] + ([{"params": tower, "lr": E("LRT",1e-3)}] if TRAIN_TOWER else []))
    if PROJ=="mix":
        with torch.no_grad():
            sc,p=capset[0]; f=model.model.vision_tower(pixel_values=p[None], output_hidden_states=True).hidden_states[FL][:,1:] if not ORACLE else p[None]
            z=model.model.multi_modal_projector.logits(f).view(1,N,E("HEADS",3),-1)
            print("scene", [o.name+" "+o.position for o in sc.objects])
            for k in range(N): print(k, [tok.decode([int(j)]) for j in z[0,k].argmax(-1)], [round(float(v),2) for v in torch.softmax(z[0,k],-1).max(-1).values])
    print("after s1", caption_eval(), evaluate() if S2 else "", round(time.time()-t0,1), flush=True)
if not S2: sys.exit(0)
for p in llm: p.requires_grad=True
T2=E("T2",TRAIN_TOWER)
for p in tower: p.requires_grad=bool(T2)
train(2, S2, [{"params": llm, "lr": LR2}, {"params": proj, "lr": LRP2}] + ([{"params": tower, "lr": E("LRT",1e-3)}] if T2 else []))
print("after s2", evaluate(), round(time.time()-t0,1), flush=True)
