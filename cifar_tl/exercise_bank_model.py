"""The exercises of notebooks 03-04 (transfer learning, model): checks, solutions, wrong answers."""

from __future__ import annotations

import torch

from .exercise_bank_basics import _close, _number
from .exercises import Wrong, register


# ---- 03 transfer learning ---------------------------------------------------------------------
@register("03.1", "pool", """
    def pool(fmap):
        return fmap.mean(dim=(2, 3))  # [1, C, H, W] -> [1, C]

    fmap = maps[last]
    print(f"last stage: {tuple(fmap.shape)} -> pooled {tuple(pool(fmap).shape)}: "
          f"{fmap.shape[2]} x {fmap.shape[3]} positions averaged into one number per channel")
    print(f"最后一个阶段：{tuple(fmap.shape)} -> 池化后 {tuple(pool(fmap).shape)}："
          f"{fmap.shape[2]} x {fmap.shape[3]} 个位置平均成每个通道一个数")
    print("the head sees only these numbers: where in the image a pattern was is averaged away")
    print("分类头只看到这些数：某个模式出现在图像的哪个位置，已经被平均掉了")
    """, [("def pool(fmap):\n    return fmap.mean(dim=1)", "channels"),
          ("def pool(fmap):\n    return fmap.mean(dim=(2, 3))[0]", "batch"),
          ("def pool(fmap):\n    return fmap.flatten(1)", "every position")])
def _pooled(ns, pool):
    # The last stage's map, then a made-up 3 x 5 one: on smoke the last map is 1 x 1, where keeping
    # every position and averaging them give the same numbers.
    made_up = torch.randn(1, 6, 3, 5, generator=torch.Generator().manual_seed(0))
    for fmap in (ns["maps"][ns["last"]], made_up):
        _judge_pooled(fmap, torch.as_tensor(pool(fmap)))
    c = ns["maps"][ns["last"]].shape[1]
    return (f"{c} numbers, one per channel, from the last stage's map; a made-up 3 x 5 map pools the same way",
            f"最后一个阶段的特征图得到 {c} 个数，每个通道一个；虚构的 3 x 5 特征图也同样池化")


def _judge_pooled(fmap, a):
    truth = fmap.mean(dim=(2, 3))
    where = f"on a {fmap.shape[2]} x {fmap.shape[3]} map", f"在 {fmap.shape[2]} x {fmap.shape[3]} 的特征图上"
    if a.shape == truth.shape and torch.allclose(a, truth, atol=1e-6):
        return
    if a.shape == fmap.mean(dim=1).shape and torch.allclose(a, fmap.mean(dim=1), atol=1e-6):
        raise Wrong(f"{where[0]}: averaged over the channels (dim 1): one number per position; average over height and width",
                    f"{where[1]}：这是在通道上（dim 1）求的平均：每个位置一个数；应在高和宽上求平均")
    if a.numel() == truth.numel() and torch.allclose(a.flatten(), truth.flatten(), atol=1e-6):
        raise Wrong(f"{where[0]}: the right numbers in shape {tuple(a.shape)}: keep the batch dimension, [1, C]",
                    f"{where[1]}：数值对了，但形状是 {tuple(a.shape)}：要保留批次维度，[1, C]")
    if a.numel() == fmap.numel():
        raise Wrong(f"{where[0]}: that keeps every position of the map; pooling averages them away, to [1, C]",
                    f"{where[1]}：这保留了特征图的每一个位置；池化要把它们平均掉，得到 [1, C]")
    if a.shape != truth.shape:
        raise Wrong(f"{where[0]}: shape {tuple(a.shape)}: average the [1, C, H, W] map over dims 2 and 3, to [1, C]",
                    f"{where[1]}：形状是 {tuple(a.shape)}：把 [1, C, H, W] 的特征图在第 2、3 维上求平均，得到 [1, C]")
    raise Wrong(f"{where[0]}: the right shape, other numbers: a mean over height and width",
                f"{where[1]}：形状对了，数值不对：应是在高和宽上的平均")


@register("03.2", "nn_superclass", """
    nn_superclass = nearest_neighbour_accuracy(z, torch.tensor(coarse))
    print(f"nearest neighbour in the same superclass: {nn_superclass:.1%} (chance: 1 in 20, 5%); "
          f"in the same fine class: {nn_features:.1%} (chance 1%)")
    print(f"最近邻属于同一超类：{nn_superclass:.1%}（随机猜测：20 选 1，5%）；"
          f"属于同一细类：{nn_features:.1%}（随机猜测 1%）")
    print("a neighbour of the same fine class is also in the same superclass, so the first can only be higher")
    print("同一细类的近邻必然也在同一超类里，所以前者只会更高（至少相等）")
    """, [("nn_superclass = nearest_neighbour_accuracy(z, labels)", "fine-class"),
          ("nn_superclass = 1 / 20", "chance")])
def _nn_superclass(ns, nn_superclass):
    truth = ns["nearest_neighbour_accuracy"](ns["z"], torch.as_tensor(ns["coarse"]))
    a = _number(nn_superclass, "an accuracy", "准确率")
    if _close(a, truth, 1e-9):
        fine = ns["nn_features"]
        return (f"{a:.1%} in the same superclass (chance 5%; fine class: {fine:.1%})",
                f"{a:.1%} 的最近邻属于同一超类（随机猜测 5%；同一细类：{fine:.1%}）")
    if _close(a, ns["nn_features"], 1e-9):
        raise Wrong("that is the fine-class accuracy, nn_features: pass the superclass labels, coarse",
                    "这是细类的准确率 nn_features：要传入超类标签 coarse")
    if _close(a, 1 / 20):
        raise Wrong("1/20 is chance, the baseline to compare with: measure the neighbours instead",
                    "1/20 是随机猜测的水平，是用来比较的基线：要去实际测量最近邻")
    raise Wrong(f"{a:.4g} is not what nearest_neighbour_accuracy(z, ...) gives with the superclass labels",
                f"{a:.4g} 不是 nearest_neighbour_accuracy(z, ...) 在超类标签下给出的值")


# ---- 04 model --------------------------------------------------------------------------------
@register("04.1", "my_count", """
    d, c = model.backbone.num_features, len(train_ds.classes)
    my_count = (d * 128 + 128) + (128 * c + c)  # two Linear layers, weights + biases · 两个 Linear 层，权重 + 偏置
    print(f"d = {d}, c = {c}: ({d} x 128 + 128) + (128 x {c} + {c}) = {my_count:,} parameters · 个参数")
    tutorial = models.count_parameters(model.head)["trainable"]
    print(f"the tutorial's head (two hidden layers of 256): {tutorial:,}; almost all of it is the first layer, d x width")
    print(f"教程的分类头（两个 256 维的隐藏层）：{tutorial:,}；几乎全部来自第一层，d x 宽度")
    """, [("d, c = model.backbone.num_features, len(train_ds.classes)\nmy_count = d * 128 + 128 * c", "biases"),
          ("d, c = model.backbone.num_features, len(train_ds.classes)\nmy_count = (d * 128 + 128) * (128 * c + c)", "add"),
          ("my_count = models.count_parameters(model.head)['trainable']", "two hidden layers")])
def _count(ns, my_count):
    from .models import MLPHead, count_parameters

    d, c = ns["model"].backbone.num_features, len(ns["train_ds"].classes)
    truth = count_parameters(MLPHead(d, c, hidden=(128,)))["trainable"]
    if my_count == truth:
        return f"{my_count:,} parameters", f"{my_count:,} 个参数"
    if my_count == d * 128 + 128 * c:
        raise Wrong(f"the biases are missing: each Linear(a, b) also has b of them ({128 + c} here)",
                    f"缺少偏置：每个 Linear(a, b) 还有 b 个偏置（这里共 {128 + c} 个）")
    if my_count == (d * 128 + 128) * (128 * c + c):
        raise Wrong("a product: the layers' counts add up, they do not multiply",
                    "这是乘积：各层的参数个数要相加，而不是相乘")
    if my_count == count_parameters(ns["model"].head)["trainable"]:
        raise Wrong("that is the notebook's head, with two hidden layers of 256; this one has one of 128",
                    "这是笔记本里的分类头，有两个 256 维的隐藏层；这里的分类头只有一个 128 维的隐藏层")
    raise Wrong("count both Linear layers, d -> 128 and 128 -> c, weights and biases",
                "两个 Linear 层 d -> 128 和 128 -> c 都要算上，权重和偏置都要算")


@register("04.2", "my_model", """
    my_backbone = models.build_backbone("resnet18", weights=None)
    my_model = models.TransferModel(my_backbone, models.MLPHead(my_backbone.num_features, 100))
    with torch.no_grad():
        scores = my_model.eval()(torch.randn(2, 3, 64, 64))
    counts = models.count_parameters(my_model)
    print(f"resnet18 gives {my_backbone.num_features} features (this notebook's {model.backbone.name}: "
          f"{model.backbone.num_features}), so its head starts at {my_backbone.num_features}; scores {tuple(scores.shape)}")
    print(f"resnet18 输出 {my_backbone.num_features} 维特征（本笔记本的 {model.backbone.name}："
          f"{model.backbone.num_features} 维），所以它的分类头从 {my_backbone.num_features} 开始；"
          f"得分的形状 {tuple(scores.shape)}")
    print(f"trainable {counts['trainable']:,} (the head), frozen {counts['frozen']:,} (the backbone)")
    print(f"可训练 {counts['trainable']:,}（分类头），冻结 {counts['frozen']:,}（主干网络）")
    """, [("my_model = models.TransferModel(models.build_backbone('resnet18', weights=None), models.MLPHead(1280, 100))",
           "expects 1280"),
          ("my_model = model", "notebook's model")])
def _resnet_model(ns, my_model):
    from .models import TransferModel

    if my_model is ns.get("model"):
        raise Wrong("that is the notebook's model; build a new one with a resnet18 backbone",
                    "这是笔记本里的模型；请用 resnet18 主干网络构建一个新模型")
    if not isinstance(my_model, TransferModel):
        kind = type(my_model).__name__
        raise Wrong(f"a {kind}; the answer is models.TransferModel(backbone, head)",
                    f"这是一个 {kind}；答案应是 models.TransferModel(backbone, head)")
    name = getattr(my_model.backbone, "name", "?")
    if name != "resnet18":
        raise Wrong(f"the backbone is {name}, not resnet18", f"主干网络是 {name}，不是 resnet18")
    first = next(m for m in my_model.head.modules() if isinstance(m, torch.nn.Linear))
    features = my_model.backbone.num_features
    if first.in_features != features:
        raise Wrong(f"the head expects {first.in_features} features, resnet18 gives {features}: "
                    "size the head with the backbone's num_features",
                    f"分类头需要 {first.in_features} 维特征，而 resnet18 输出 {features} 维："
                    "用主干网络的 num_features 来确定分类头的大小")
    was = my_model.training
    with torch.no_grad():
        shape = tuple(my_model.eval()(torch.randn(2, 3, 64, 64)).shape)
    my_model.train(was)
    if shape != (2, 100):
        raise Wrong(f"2 images give scores of shape {shape}, not (2, 100): the head's last layer has 100 outputs",
                    f"2 张图像得到的得分形状是 {shape}，不是 (2, 100)：分类头的最后一层应有 100 个输出")
    return f"resnet18: {features} features -> 100 scores", f"resnet18：{features} 维特征 -> 100 个得分"
